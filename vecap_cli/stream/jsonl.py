"""JSONL carrier: one JSON object per line; images travel as paths in `image`."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable, Iterator
from typing import BinaryIO

import orjson

from vecap_cli.errors import VecapError
from vecap_cli.stream.picker import Picker
from vecap_cli.stream.sample import IMAGE_EXTS, Sample, Source
from vecap_cli.stream.tally import Tally
from vecap_cli.stream.tar import ext_ok, member_name_ok


def parse_record(line: bytes) -> tuple[dict | None, str, str]:
    """(record, '', '') or (None, reason, detail) for a line that is not a usable record."""
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError as err:
        return None, *_unparsable(line, err)
    problem = _unusable(record)
    return (None, *problem) if problem else (record, "", "")


def _unparsable(line: bytes, err: Exception) -> tuple[str, str]:
    try:
        line.decode("utf-8")
    except UnicodeDecodeError:
        return "not-utf8", "line is not UTF-8"
    return "bad-json", str(err)


def _unusable(record: object) -> tuple[str, str] | None:
    if not isinstance(record, dict):
        return "not-object", f"a JSON {type(record).__name__}, not an object"
    key = record.get("key")
    if key is None:
        return "no-key", "record has no 'key'"
    if not isinstance(key, str | int) or isinstance(key, bool) or key == "":
        return "bad-key", f"'key' must be a non-empty string or an integer, not {key!r}"
    return None


def read_jsonl(
    stream: Iterable[bytes], source: Source, tally: Tally, pick: Picker, first_line: int = 1
) -> Iterator[Sample]:
    """Samples from a JSONL stream, numbered (and split between ranks) by `pick`;
    `first_line`: the line number of the first line (a batch cut from a file).

    This loop is every command's floor: the common record (an object with a
    string key, on a run that keeps every record) takes the short path.
    """
    if not pick.plain:
        yield from _picked(stream, source, tally, pick, first_line)
        return
    loads = orjson.loads
    idx = pick.ordinal  # counted here, and handed back to `pick` however the reading ends
    try:
        for lineno, line in enumerate(stream, first_line):
            if line.isspace():
                continue
            idx += 1
            tally.n_in += 1
            try:
                record = loads(line)
            except orjson.JSONDecodeError as err:
                problem: tuple[str, str] | None = _unparsable(line, err)
            else:
                if type(record) is dict:
                    key = record.get("key")
                    if type(key) is str and key:
                        yield Sample(record, None, idx, source, lineno)
                        continue
                problem = _unusable(record)
            if problem is None:  # an integer key
                yield Sample(record, None, idx, source, lineno)
                continue
            raw = line.decode("utf-8", "backslashreplace").rstrip("\n")
            tally.reject(*problem, idx=idx, origin=f"{source.name}:{lineno}", raw=raw)
    finally:
        pick.ordinal = idx


def _picked(
    stream: Iterable[bytes], source: Source, tally: Tally, pick: Picker, first_line: int
) -> Iterator[Sample]:
    """`read_jsonl` for a run that skips records (another rank's, or --resume's)."""
    for lineno, line in enumerate(stream, first_line):
        if line.isspace():
            continue
        idx = pick()
        if idx < 0:
            continue
        tally.n_in += 1
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError as err:
            problem: tuple[str, str] | None = _unparsable(line, err)
        else:
            problem = _unusable(record)
        if problem is None:
            yield Sample(record, None, idx, source, lineno)
            continue
        raw = line.decode("utf-8", "backslashreplace").rstrip("\n")
        tally.reject(*problem, idx=idx, origin=f"{source.name}:{lineno}", raw=raw)


class JsonlWriter:
    """Writes records; tar members (images and others) go to files under `images_dir`.

    Image paths are written relative to `rel_to` (the output file's directory), so
    the JSONL reads back from wherever it is, as the reader resolves them.

    The names come from the tar, so they are untrusted: a key or member that would
    land outside `images_dir` is rejected (`bad-key`), and a file is created only
    if no file of that name exists (`duplicate-key` otherwise, unless it holds the
    same bytes: a rerun or --resume writing the same sample again).
    """

    def __init__(
        self,
        stream: BinaryIO,
        images_dir: str | None = None,
        rel_to: str = "",
        tally: Tally | None = None,
    ):
        self._stream = stream
        self._images_dir = images_dir
        self._rel_to = rel_to
        self._tally = tally or Tally("jsonl")
        self._root = os.path.realpath(images_dir) if images_dir is not None else ""

    def write(self, sample: Sample) -> bool:
        record = sample.record
        if sample.members:
            record = self._extract(sample)
            if record is None:
                return False
        self._stream.write(orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE))
        return True

    def put(self, lines: bytes) -> None:
        """Records already encoded (in a worker process), one JSON object a line."""
        self._stream.write(lines)

    def write_all(self, samples: Iterable[Sample], tally: Tally) -> None:
        """`write` each sample, counting it out as it goes."""
        put, dumps, option = self._stream.write, orjson.dumps, orjson.OPT_APPEND_NEWLINE
        for sample in samples:
            record = self._extract(sample) if sample.members else sample.record
            if record is not None:
                put(dumps(record, option=option))
                tally.n_out += 1

    def _extract(self, sample: Sample) -> dict | None:
        """The record with its members' paths, the files written; None when rejected."""
        if self._images_dir is None:
            raise VecapError(
                f"{sample.origin}: the input carries images, which JSONL output cannot hold: "
                "pass --images-dir DIR to write them there"
            )
        problem = self._bad_names(sample)
        if problem:
            self._tally.reject("bad-key", problem, sample)
            return None
        record = dict(sample.record)
        others = {}
        for ext, data in sorted(sample.members.items()):
            path = os.path.join(self._images_dir, f"{sample.key}.{ext}")
            problem = self._place(path, data)
            if problem:
                self._tally.reject(*problem, sample)
                return None
            rel = os.path.relpath(path, self._rel_to) if self._rel_to else path
            if ext in IMAGE_EXTS:
                record["image"] = rel
            else:
                others[ext] = rel
        if others:
            record["members"] = others
        return record

    def _bad_names(self, sample: Sample) -> str:
        key = sample.key
        if not member_name_ok(key):
            return f"key {key!r} cannot name a file inside --images-dir"
        for ext in sample.members:
            if not ext_ok(ext):
                return f"member {key}.{ext!r} cannot name a file inside --images-dir"
        return ""

    def _place(self, path: str, data: bytes) -> tuple[str, str] | None:
        """Create `path` holding `data`, inside the images dir, never over another file."""
        folder = os.path.dirname(path)
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as err:  # a file where a folder of the key should be
            return "bad-key", f"cannot make '{folder}': {err.strerror}"
        if os.path.commonpath([os.path.realpath(folder), self._root]) != self._root:
            return "bad-key", f"'{path}' resolves outside --images-dir (a link?)"
        try:
            created = _create(path, data)
        except OSError as err:
            if err.errno in (errno.ENAMETOOLONG, errno.EISDIR, errno.ENOTDIR, errno.EINVAL):
                return "bad-key", f"cannot write '{path}': {err.strerror}"
            raise
        if not created and not _holds(path, data):
            return "duplicate-key", f"'{path}' already holds another sample's member"
        return None

    def close(self) -> None:
        self._stream.flush()

    def abort(self) -> None:
        self._stream.flush()  # the lines written are whole records


def _create(path: str, data: bytes) -> bool:
    """Write `path` whole, only if no such name exists: False when one does.

    Written beside it under a private name, then hard-linked into place, which
    fails if the name exists (even a dangling link): never overwrites, never
    follows a link, and a crash leaves no half-written image under a real name.
    """
    folder, name = os.path.split(path)
    tmp = os.path.join(folder, f".{name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        except OSError as err:  # a file system without hard links: create exclusively
            if err.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV):
                raise
            return _create_exclusive(path, data)
        return True
    finally:
        os.unlink(tmp)


def _create_exclusive(path: str, data: bytes) -> bool:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return True


def _holds(path: str, data: bytes) -> bool:
    """Whether the regular file `path` holds exactly `data`."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return False
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        return stat.S_ISREG(info.st_mode) and info.st_size == len(data) and f.read() == data
