"""The one record type every step and both carriers share."""

from __future__ import annotations

import os
from dataclasses import dataclass

from vecap_cli.stream.images import (
    DEFAULT_LIMITS,
    MISSING,
    ImageLimits,
    ImageRejected,
    check_size,
    read_file,
)

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")


@dataclass(frozen=True, slots=True)
class Source:
    """Where samples come from; relative `image` paths resolve against `base`."""

    name: str  # as the user wrote it: a path, '-', or 'pipe:...'
    carrier: str  # "jsonl" | "tar"
    base: str  # directory for relative image paths ('' for stdin and pipes: the cwd)


class ImageMissing(ImageRejected):
    """A sample has no image to read; the caller rejects the sample (image-missing)."""

    def __init__(self, detail: str):
        super().__init__(MISSING, detail)


class Sample:
    """A record (the JSON fields) plus the binary tar members that travel with it.

    `record` is the whole JSON object, `key` included; JSONL carries nothing else.
    `members` maps a tar extension to bytes: the image (`jpg`, `png`, ...) and any
    member vecap does not interpret, carried through untouched. `idx` is the
    ordinal of the input record this sample came from: it ties a sample (and every
    sample derived from it) to its input for accounting and `--resume`.
    """

    __slots__ = ("idx", "members", "pos", "record", "source")

    def __init__(
        self,
        record: dict,
        members: dict[str, bytes] | None = None,
        idx: int = -1,
        source: Source | None = None,
        pos: object = None,
    ):
        self.record = record
        self.members = members or {}
        self.idx = idx
        self.source = source
        self.pos = pos  # line number (JSONL) or member key (tar), for messages

    @property
    def key(self) -> str:
        return str(self.record["key"])

    @property
    def origin(self) -> str:
        name = self.source.name if self.source else "?"
        return f"{name}:{self.pos}" if self.pos is not None else name

    def derive(self, record: dict) -> Sample:
        """A new sample standing for the same input (same idx, members and origin)."""
        return Sample(record, dict(self.members), self.idx, self.source, self.pos)

    @property
    def from_tar(self) -> bool:
        """Whether the record arrived inside a tar: then its fields are data only,
        never local paths (a web record must not make vecap read the user's files)."""
        return self.source is not None and self.source.carrier == "tar"

    def image_ext(self) -> str | None:
        for ext in IMAGE_EXTS:
            if ext in self.members:
                return ext
        if self.from_tar:
            return None
        path = self.record.get("image")
        if isinstance(path, str):
            ext = os.path.splitext(path)[1][1:].lower()
            return ext if ext in IMAGE_EXTS else None
        return None

    def image_bytes(self, limits: ImageLimits = DEFAULT_LIMITS) -> bytes:
        """The encoded image: the tar member, else (JSONL only) the file named by
        `image`; ImageRejected when there is none or it is over the byte cap."""
        for ext in IMAGE_EXTS:
            if ext in self.members:
                return check_size(self.members[ext], limits, f"{self.key}.{ext}")
        if self.from_tar:
            raise ImageMissing("no image member (a tar record's 'image' is not a local path)")
        path = self.record.get("image")
        if not isinstance(path, str) or not path:
            raise ImageMissing("no image")
        return read_beside(self.source, path, limits)

    def has_image(self) -> bool:
        if any(ext in self.members for ext in IMAGE_EXTS):
            return True
        return not self.from_tar and bool(self.record.get("image"))

    def caption(self) -> str | None:
        """The training caption: `text` when a mix step chose one, else the AltText."""
        for field in ("text", "alt"):
            value = self.record.get(field)
            if isinstance(value, str) and value:
                return value
        return None


def read_beside(source: Source | None, path: str, limits: ImageLimits = DEFAULT_LIMITS) -> bytes:
    """The bytes of the regular file `path`, resolved against the directory of the
    JSONL input it came from, within the byte cap; ImageRejected otherwise."""
    if not isinstance(path, str) or not path or "\0" in path:
        raise ImageMissing(f"not a file name: {path!r}")
    if source is not None and source.carrier == "tar":  # never: see Sample.from_tar
        raise ImageMissing(f"'{path}' names a local file from inside a tar")
    return read_file(os.path.join(source.base, path) if source else path, limits)
