"""webdataset tar carrier, on the standard library's streaming `tarfile`.

A sample is the run of consecutive members sharing a key, split exactly as
webdataset does (`dir/KEY.ext...`: the key ends at the first dot of the base
name), so shards written here read in webdataset and open_clip unchanged, and
raw img2dataset shards read here. We do not import webdataset itself: it imports
torch, and a text-only step must start in milliseconds.

Members: `json` is the record; `txt` (the training caption: `text`, else `alt`)
and `cls` are views of the record, written for trainers; everything else (the
image, embeddings, ...) travels as bytes in `Sample.members`.
"""

from __future__ import annotations

import re
import tarfile
from collections.abc import Iterator
from typing import BinaryIO

import orjson

from vecap_cli.errors import VecapError
from vecap_cli.stream.images import DEFAULT_LIMITS, ImageLimits, ImageRejected
from vecap_cli.stream.sample import IMAGE_EXTS, Sample, Source, read_beside
from vecap_cli.stream.tally import Tally

_SPLIT = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # webdataset's base_plus_ext
_MTIME = 1_700_000_000  # fixed, so the same samples always give the same bytes
# A sample's members are read whole into memory: one that would take the sample
# past this (a .tar.gz of zeros can claim any size, a key can repeat its members
# under many extensions) is skipped unread, and the sample rejected as
# member-too-large. Images have their
# own, lower cap (--max-image-bytes) where they are decoded.
MAX_MEMBER = 1 << 30


def _groups(
    tar: tarfile.TarFile, stream: _Counting, max_member: int = MAX_MEMBER
) -> Iterator[tuple[str | None, dict[str, bytes | None], str]]:
    """(key, {ext: bytes}, error): error is set once, on the group a damaged stream cut short.
    A member that would take its group over `max_member` bytes is not read: its
    value is None.

    A stream cut exactly between two members reads as a shorter valid tar to
    tarfile; only the missing end-of-archive block tells, so the group read last
    is then reported as damaged too (it may have lost members).
    """
    key, group, held = None, {}, 0
    try:
        for info in tar:
            if not info.isfile():
                continue
            match = _SPLIT.match(info.name)
            if match is None or match.group(1).rsplit("/", 1)[-1].startswith("__"):
                continue  # no extension, or webdataset's __meta__ files
            prefix, ext = match.group(1), match.group(2).lower()
            if prefix != key or ext in group:
                if group:
                    yield key, group, ""
                key, group, held = prefix, {}, 0
            if held + info.size > max_member:
                group[ext] = None  # tarfile skips the unread data block by block
                continue
            held += info.size
            group[ext] = tar.extractfile(info).read()  # type: ignore[union-attr]
    except (tarfile.TarError, EOFError, OSError) as err:
        yield key, group, str(err) or type(err).__name__
        return
    if group:
        ended = stream.total > tar.offset  # the end-of-archive block was read
        yield key, group, "" if ended else "no end-of-archive block"


class _Counting:
    """Counts the bytes tarfile reads: how a missing end-of-archive block shows."""

    def __init__(self, stream: BinaryIO):
        self._stream, self.total = stream, 0

    def read(self, n: int = -1) -> bytes:
        data = self._stream.read(n)
        self.total += len(data)
        return data


def to_sample(key: str, group: dict[str, bytes]) -> tuple[dict | None, str, str]:
    """The record of one member group, or (None, reason, detail)."""
    record: dict = {}
    if "json" in group:
        try:
            record = orjson.loads(group.pop("json"))
        except orjson.JSONDecodeError as err:
            return None, "bad-json", f"{key}.json: {err}"
        if not isinstance(record, dict):
            return None, "not-object", f"{key}.json holds a JSON {type(record).__name__}"
    record.setdefault("key", key)
    txt = group.pop("txt", None)
    if "alt" not in record and "text" not in record:
        # a raw img2dataset shard: its caption is the AltText
        if txt is not None:
            record["alt"] = txt.decode("utf-8", "replace")
        elif isinstance(record.get("caption"), str):
            record["alt"] = record["caption"]
    cls = group.pop("cls", None)
    if cls is not None and "cls" not in record:
        try:
            record["cls"] = int(cls)
        except ValueError:
            return None, "bad-cls", f"{key}.cls is not an integer: {cls[:20]!r}"
    if "members" in record or ("image" in record and not any(e in group for e in IMAGE_EXTS)):
        # Paths in a record from a tar are never read here (Sample.from_tar), but
        # written to JSONL they would be read as local files by the next step.
        # vecap's own tars carry the image beside its `image` and never `members`.
        return None, "path-from-tar", f"{key}.json names local files it does not carry"
    return record, "", ""


def read_tar(
    stream: BinaryIO, source: Source, tally: Tally, pick, max_member: int = MAX_MEMBER
) -> Iterator[Sample]:
    """Samples from a tar stream; `pick()` returns this run's idx, or -1 to skip."""
    counted = _Counting(stream)
    try:
        tar = tarfile.open(fileobj=counted, mode="r|")  # type: ignore[call-overload]
    except tarfile.TarError as err:
        raise VecapError(f"cannot read '{source.name}': not a tar file ({err})") from None
    for key, group, error in _groups(tar, counted, max_member):
        idx = pick()
        if idx < 0:
            continue
        tally.n_in += 1
        origin = f"{source.name}:{key}" if key else source.name
        if error:
            # Samples before the damage are already out; the one cut short is
            # rejected and the next input goes on.
            tally.reject("tar-truncated", f"tar stream ends early: {error}", idx=idx, origin=origin)
            continue
        big = [ext for ext, data in group.items() if data is None]
        if big:
            detail = f"{key}.{big[0]} takes the sample over {max_member:,} bytes"
            tally.reject("member-too-large", detail, idx=idx, origin=origin)
            continue
        record, reason, detail = to_sample(key, group)
        if record is None:
            tally.reject(reason, detail, idx=idx, origin=origin)
            continue
        yield Sample(record, group, idx, source, key)


def member_name_ok(key: str) -> bool:
    """Keys that name tar members and files safely: relative, no '.' or '..' part,
    no dot in the base, no NUL or backslash (a path separator to some extractors)."""
    parts = key.split("/")
    return (
        bool(key)
        and "." not in parts[-1]
        and all(p not in ("", ".", "..") for p in parts)
        and "\0" not in key
        and "\\" not in key
    )


def ext_ok(ext: object) -> bool:
    """A member extension that stays one file name after `KEY.`."""
    return isinstance(ext, str) and bool(ext) and not (set(ext) & {"/", "\\", "\0"})


class TarWriter:
    """Writes samples as member groups (`tar_blocks`); blocks encoded elsewhere (in a
    worker process) are written as they are (`put`)."""

    def __init__(self, stream: BinaryIO, tally: Tally, limits: ImageLimits = DEFAULT_LIMITS):
        self._tar = tarfile.open(fileobj=stream, mode="w|", format=tarfile.USTAR_FORMAT)
        self._tally = tally
        self._limits = limits

    def write(self, sample: Sample) -> bool:
        blocks = tar_blocks(sample, self._tally, self._limits)
        if blocks is None:
            return False
        self.put(blocks)
        return True

    def put(self, blocks: bytes) -> None:
        """Whole members (`tar_blocks`), as `tarfile.addfile` writes them: a record
        (10 KiB) at a time, as tarfile's stream buffer copies what it holds on each
        write (a batch of members written at once would be copied again and again)."""
        view = memoryview(blocks)
        for at in range(0, len(view), tarfile.RECORDSIZE):
            self._tar.fileobj.write(view[at : at + tarfile.RECORDSIZE])
        self._tar.offset += len(blocks)

    def close(self) -> None:
        self._tar.close()

    def abort(self) -> None:
        """Stop without the end-of-archive blocks, so a reader sees a damaged
        stream rather than a short valid one (tarfile would add them when collected)."""
        self._tar.fileobj.closed = True  # tarfile's _Stream in "w|" mode
        self._tar.closed = True


def tar_blocks(sample: Sample, tally: Tally, limits: ImageLimits = DEFAULT_LIMITS) -> bytes | None:
    """The sample's member group as tar blocks (each member: its header, its data,
    NULs to a whole block), or None when `tally` rejected it. A JSONL record's
    `image` (and `members`) files are packed in, read within `limits` (regular
    files, the byte cap)."""
    key = sample.key
    if not member_name_ok(key):
        tally.reject("bad-key", f"key {key!r} cannot name a tar member", sample)
        return None
    try:
        members = _members(sample, limits)
    except ImageRejected as err:
        tally.reject(err.reason, str(err), sample)
        return None
    blocks = []
    for ext in sorted(members):
        data = members[ext]
        info = tarfile.TarInfo(f"{key}.{ext}")
        info.size, info.mtime, info.mode = len(data), _MTIME, 0o444
        blocks += (info.tobuf(tarfile.USTAR_FORMAT, tarfile.ENCODING, "surrogateescape"), data)
        if len(data) % tarfile.BLOCKSIZE:
            blocks.append(tarfile.NUL * (tarfile.BLOCKSIZE - len(data) % tarfile.BLOCKSIZE))
    return b"".join(blocks)


def _members(sample: Sample, limits: ImageLimits) -> dict[str, bytes]:
    record = sample.record
    members = dict(sample.members)
    if sample.has_image() and not any(ext in members for ext in IMAGE_EXTS):
        members[sample.image_ext() or "jpg"] = sample.image_bytes(limits)
    extra = record.get("members")
    # members a JSONL writer put in files; in a record from a tar, `members` is data
    if isinstance(extra, dict) and not sample.from_tar:
        record = {k: v for k, v in record.items() if k != "members"}
        for ext, path in extra.items():
            if not ext_ok(ext):
                raise ImageRejected("bad-members", f"'members' has a bad extension {ext!r}")
            members[ext] = read_beside(sample.source, path, limits)
    members["json"] = orjson.dumps(record)
    caption = sample.caption()
    if caption is not None:
        members["txt"] = caption.encode()
    if isinstance(record.get("cls"), int):
        members["cls"] = str(record["cls"]).encode()
    return members
