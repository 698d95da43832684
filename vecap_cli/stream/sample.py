"""The one record type every step and both carriers share."""

from __future__ import annotations

import os
from dataclasses import dataclass

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")


@dataclass(frozen=True, slots=True)
class Source:
    """Where samples come from; relative `image` paths resolve against `base`."""

    name: str  # as the user wrote it: a path, '-', or 'pipe:...'
    carrier: str  # "jsonl" | "tar"
    base: str  # directory for relative image paths ('' for stdin and pipes: the cwd)


class ImageMissing(Exception):
    """A sample's image could not be read; the caller rejects the sample."""


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

    def image_ext(self) -> str | None:
        for ext in IMAGE_EXTS:
            if ext in self.members:
                return ext
        path = self.record.get("image")
        if isinstance(path, str):
            ext = os.path.splitext(path)[1][1:].lower()
            return ext if ext in IMAGE_EXTS else None
        return None

    def image_bytes(self) -> bytes:
        """The encoded image: the tar member, else the file named by `image`."""
        for ext in IMAGE_EXTS:
            if ext in self.members:
                return self.members[ext]
        path = self.record.get("image")
        if not isinstance(path, str) or not path:
            raise ImageMissing("no image")
        return read_beside(self.source, path)

    def has_image(self) -> bool:
        return any(ext in self.members for ext in IMAGE_EXTS) or bool(self.record.get("image"))

    def caption(self) -> str | None:
        """The training caption: `text` when a mix step chose one, else the AltText."""
        for field in ("text", "alt"):
            value = self.record.get(field)
            if isinstance(value, str) and value:
                return value
        return None


def read_beside(source: Source | None, path: str) -> bytes:
    """The bytes of `path`, resolved against the directory of the input it came from."""
    full = os.path.join(source.base, path) if source else path
    try:
        with open(full, "rb") as f:
            return f.read()
    except OSError as err:
        raise ImageMissing(f"cannot read '{full}': {err.strerror}") from None
