"""Where samples go: stdout, one file, or numbered shards that a crash cannot corrupt.

Files are written under a temporary name and renamed when complete, so a name
that exists is a whole file. Sharded output also keeps a small progress file
per rank: which shards are finished, how many inputs they account for, and the
counts behind them, which is what `--resume` continues from.

Two runs never write one output: a sharded folder is locked per rank
(`.vecap-rank{R}.lock`, flock), a single file through its `NAME.tmp`, and a
second run refuses at once. flock dies with its process, so a run killed with
-9 leaves nothing that blocks `--resume`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import gzip
import hashlib
import os
import re
import sys
from array import array
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import BinaryIO

import orjson

from vecap_cli.errors import VecapError
from vecap_cli.stream.images import DEFAULT_LIMITS, ImageLimits
from vecap_cli.stream.jsonl import JsonlWriter
from vecap_cli.stream.sample import Sample
from vecap_cli.stream.sources import carrier_from_name
from vecap_cli.stream.tally import Tally
from vecap_cli.stream.tar import TarWriter

_PATTERN = re.compile(r"%0?\d*d|\{shard(:[^}]*)?\}")
_PARTS = re.compile(r"(%%|%0?\d*d|\{shard(?::[^}]*)?\})")
# Failures of a write that no retry fixes: one line naming the file.
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO, errno.EPIPE}


def pattern_error(path: str) -> str | None:
    """Why `path` cannot be an -o, or None: a '%' or a '{' makes it a shard pattern,
    which must number the shards once (%d, %06d or {shard}, {shard:06d}); a literal
    % is written %%."""
    example = "e.g. out/%06d.tar or out/{shard:06d}.tar"
    if path == "-" or ("%" not in path and "{" not in path and "}" not in path):
        return None
    if "%" in path and ("{" in path or "}" in path):
        return f"-o '{path}': number the shards with %d or with {{shard}}, not both ({example})"
    try:
        if "%" in path:
            bare = path.replace("%%", "")
            if bare.count("%") != 1 or len(re.findall(r"%0?\d*d", bare)) != 1:
                raise ValueError
            first, second = path % 0, path % 1
        else:
            first, second = path.format(shard=0), path.format(shard=1)
    except (ValueError, TypeError, KeyError, IndexError):
        return f"-o '{path}': not a shard pattern with one shard number ({example}; %% for a %)"
    if first == second:
        return f"-o '{path}': the pattern gives every shard the same name ({example})"
    return None


def shard_regex(path: str) -> re.Pattern:
    """What the names of a shard pattern's shards look like (for clashes with --stats)."""
    parts = _PARTS.split(path)
    return re.compile(
        "".join(
            "%" if part == "%%" else r"\d+" if _PARTS.fullmatch(part) else re.escape(part)
            for part in parts
        )
    )


def write_error(path: str, err: OSError) -> VecapError:
    return VecapError(f"cannot write '{path}': {err.strerror or err}")


@dataclass
class Encoded:
    """A batch of `count` outputs encoded for the output's format (in a worker
    process), as the bytes that come beside it. An output only the sink can write
    (JSONL of a tar's members, which it puts in files) is held as the sample, by its
    position, with where it falls in the bytes. For a sink that cuts shards, each
    output's input (`idxs`) and where its bytes end (`ends`)."""

    count: int
    samples: dict[int, tuple[int, Sample]]
    idxs: array
    ends: array


@dataclass(frozen=True)
class OutputSpec:
    path: str = "-"  # '-', a file, or a shard pattern (out/%06d.tar, out/{shard}.tar)
    format: str | None = None  # 'jsonl' | 'tar'; None: from the path, else the input
    shard_size: int = 10_000
    images_dir: str | None = None
    rank: int = 0
    world_size: int = 1
    resume: bool = False
    fingerprint: str = ""  # what produced the shards; --resume refuses a different one
    image_limits: ImageLimits = DEFAULT_LIMITS  # for images tar output reads from files

    @property
    def sharded(self) -> bool:
        return bool(_PATTERN.search(self.path))


def open_sink(spec: OutputSpec, tally: Tally, input_carrier: Callable[[], str]) -> Sink:
    problem = pattern_error(spec.path)
    if problem:
        raise VecapError(problem)
    if spec.sharded:
        return ShardedSink(spec, tally, input_carrier)
    if spec.resume:
        raise VecapError("--resume needs sharded output: -o 'out/%06d.tar'")
    return Sink(spec, tally, input_carrier)


class OutputFile:
    """One output being written: under `PATH.tmp` until `commit` renames it to PATH.

    `raw` is the byte stream (stdout for '-'); `open_writer` puts a record codec on it.
    """

    def __init__(self, path: str):
        self.path = path
        self.tmp = "" if path == "-" else staging_path(path)
        self.writer: JsonlWriter | TarWriter | None = None
        self._layers: list = []  # what to close, innermost (the writer's stream) first
        if path == "-":
            self.raw: BinaryIO = sys.stdout.buffer
            return
        self.raw = open_staging(self.tmp, shown=path)

    def open_writer(
        self, fmt: str, tally: Tally, images_dir: str | None, limits: ImageLimits = DEFAULT_LIMITS
    ) -> JsonlWriter | TarWriter:
        stream = self.raw
        if self.path.endswith(".gz"):
            stream = gzip.GzipFile(fileobj=stream, mode="wb", mtime=0)  # type: ignore[assignment]
            self._layers.append(stream)
        if fmt == "tar":
            if self.path == "-" and stream.isatty():
                raise VecapError(
                    "refusing to write a tar stream to a terminal: use -o FILE or a pipe"
                )
            self.writer = TarWriter(stream, tally, limits)
        else:
            rel_to = os.path.dirname(os.path.abspath(self.path)) if self.path != "-" else ""
            self.writer = JsonlWriter(stream, images_dir, rel_to, tally)
        return self.writer

    def commit(self) -> None:
        """Finish the file and rename it into place (still holding its lock), or
        remove it and raise one line when it cannot be finished (a full disk)."""
        try:
            if self.writer is not None:
                self.writer.close()
            for layer in self._layers:
                layer.close()
            self.raw.flush()
        except OSError as err:
            if self.path == "-" or err.errno not in _WRITE_ERRNOS:
                raise
            self.abandon()
            raise write_error(self.path, err) from None
        if self.path == "-":
            return
        if self.tmp != self.path:
            os.replace(self.tmp, self.path)
        self.raw.close()

    def abandon(self) -> None:
        """Drop a partial file; on stdout, leave the stream visibly unterminated."""
        if self.writer is not None:
            with contextlib.suppress(OSError):  # the disk that failed the run
                self.writer.abort()
        for layer in self._layers:
            with contextlib.suppress(Exception):
                layer.close()
        if self.path != "-":
            with contextlib.suppress(OSError):  # a full disk fails the flush of close
                self.raw.close()
            if self.tmp != self.path and os.path.exists(self.tmp):
                os.remove(self.tmp)


class Sink:
    """Stdout or one file; `write` returns False when the writer rejected the sample."""

    cuts = False  # whether it closes files between outputs (wants each one's input)

    def __init__(self, spec: OutputSpec, tally: Tally, input_carrier: Callable[[], str]):
        self.spec, self.tally, self._input_carrier = spec, tally, input_carrier
        self.file: OutputFile | None = None if spec.sharded else OutputFile(spec.path)

    def output_format(self) -> str:
        """'jsonl' or 'tar': --format, else the output's name, else the first input's carrier."""
        assert self.file is not None
        return self.spec.format or carrier_from_name(self.file.path) or self._input_carrier()

    def _writer(self) -> JsonlWriter | TarWriter:
        assert self.file is not None
        if self.file.writer is not None:
            return self.file.writer
        fmt = self.output_format()
        return self.file.open_writer(fmt, self.tally, self.spec.images_dir, self.spec.image_limits)

    def write(self, sample: Sample) -> bool:
        writer = self.file.writer or self._writer()  # type: ignore[union-attr]
        if writer.write(sample):
            self.tally.n_out += 1
            return True
        return False

    def write_all(self, samples: Iterable[Sample]) -> None:
        """`write` each sample; JSONL records after the first go through the writer's
        own loop (the per-sample calls cost a tenth of a plain `mix`)."""
        with self.failing_writes():
            samples = iter(samples)
            for sample in samples:
                self.write(sample)
                if type(self) is Sink and isinstance(self.file.writer, JsonlWriter):  # type: ignore[union-attr]
                    self.file.writer.write_all(samples, self.tally)  # type: ignore[union-attr]
                    return
                break
            for sample in samples:
                self.write(sample)

    def write_encoded(self, block: Encoded, data: bytes | memoryview) -> None:
        """Write a batch of outputs encoded in a worker process, in one go; the
        outputs only this process can write (`block.samples`) in their places."""
        done = 0  # bytes of `data` written
        for at in sorted(block.samples):
            offset, sample = block.samples[at]
            self._writer().put(data[done:offset])
            self.write(sample)
            done = offset
        self._writer().put(data[done:])
        self.tally.n_out += block.count - len(block.samples)

    @contextlib.contextmanager
    def failing_writes(self):
        """A write the disk refuses (full, quota, read-only) as one line naming the
        output; EPIPE on stdout stays as it is (a reader that left: exit 1, quietly)."""
        try:
            yield
        except OSError as err:
            path = self.file.path if self.file is not None else self.spec.path
            if err.errno not in _WRITE_ERRNOS or (path == "-" and err.errno == errno.EPIPE):
                raise
            raise write_error(path, err) from None

    def close(self, ok: bool) -> None:
        assert self.file is not None
        if not ok:
            self.file.abandon()
            return
        self._writer()  # no samples: still a valid (empty) file
        self.file.commit()


class ShardedSink(Sink):
    """Numbered shards of `shard_size` samples; rank r of w writes shards r, r+w, r+2w, ...

    A shard closes only between inputs, so the outputs of one input (mix --policy
    all) never straddle two shards and a shard maps to a whole range of inputs.
    """

    cuts = True

    def __init__(self, spec: OutputSpec, tally: Tally, input_carrier: Callable[[], str]):
        super().__init__(spec, tally, input_carrier)
        self.local = 0  # this rank's shard counter
        self.count = 0  # samples in the open shard
        self.sealed_out = 0
        self.last_idx = -1
        self.skip = 0  # inputs already accounted for by finished shards
        folder = os.path.dirname(self.shard_path(0)) or "."
        self.progress_path = os.path.join(
            folder, f".vecap-progress-{spec.rank}-of-{spec.world_size}.json"
        )
        self._lock = FolderLock(folder, spec.rank)
        try:
            tally.track()
            if spec.resume:
                self._resume()
            elif os.path.exists(self.progress_path):
                os.remove(self.progress_path)
            self.file = OutputFile(self.shard_path(self.local))
        except BaseException:
            self._lock.release()
            raise

    def shard_path(self, local: int) -> str:
        number = local * self.spec.world_size + self.spec.rank
        if "%" in self.spec.path:
            return self.spec.path % number
        return self.spec.path.format(shard=number)

    def _resume(self) -> None:
        try:
            with open(self.progress_path, "rb") as f:
                state = orjson.loads(f.read())
        except FileNotFoundError:
            return  # nothing finished yet: start from the beginning
        except OSError as err:
            raise VecapError(f"cannot resume from '{self.progress_path}': {err.strerror}") from None
        except orjson.JSONDecodeError:
            state = None
        if not _is_progress(state):
            raise VecapError(
                f"cannot resume: '{self.progress_path}' is damaged (not a vecap progress "
                "file); remove it, or run without --resume"
            )
        if state.get("fingerprint") != self.spec.fingerprint:
            raise VecapError(
                f"cannot resume: '{self.progress_path}' was written by a different command "
                "or input; remove it, or run without --resume"
            )
        self.local, self.skip = state["shards"], state["tally"]["in"]
        self.sealed_out = state["tally"]["out"]
        self.tally.restore(state["tally"])

    def write(self, sample: Sample) -> bool:
        if self.count >= self.spec.shard_size and sample.idx != self.last_idx:
            self._seal(boundary=sample.idx)
        if not super().write(sample):
            return False
        self.count += 1
        self.last_idx = sample.idx
        return True

    def write_encoded(self, block: Encoded, data: bytes | memoryview) -> None:
        """As Sink.write_encoded, closing the shard where `write` would."""
        run = 0  # the first output not yet written
        size = self.spec.shard_size
        for at, idx in enumerate(block.idxs):
            if at in block.samples:  # `write` counts it, and closes the shard before it
                self._put(block, data, run, at)
                self.write(block.samples[at][1])
                run = at + 1
                continue
            if self.count >= size and idx != self.last_idx:
                self._put(block, data, run, at)
                self._seal(boundary=idx)
                run = at
            self.count += 1
            self.last_idx = idx
        self._put(block, data, run, block.count)

    def _put(self, block: Encoded, data: bytes | memoryview, start: int, stop: int) -> None:
        """Outputs start..stop-1 of `block`, all of them encoded, into the open shard."""
        if stop > start:
            begin = block.ends[start - 1] if start else 0
            self._writer().put(data[begin : block.ends[stop - 1]])
            self.tally.n_out += stop - start

    def _seal(self, boundary: int) -> None:
        """Finish the open shard, then the rejects and counts of its inputs, then
        the progress file that names them all (the last step: a kill before it
        leaves the shard to be written again)."""
        self._writer()
        self.file.commit()  # type: ignore[union-attr]
        self.sealed_out += self.count
        self.local += 1
        self._write_progress(self.tally.seal(boundary, self.sealed_out))
        self.count = 0
        self.file = OutputFile(self.shard_path(self.local))

    def _write_progress(self, sealed: dict) -> None:
        state = {"fingerprint": self.spec.fingerprint, "shards": self.local, "tally": sealed}
        write_atomically(self.progress_path, orjson.dumps(state))

    def close(self, ok: bool) -> None:
        try:
            with self.failing_writes():
                if ok and self.count:
                    self._seal(boundary=self.tally.n_in)
                elif ok:  # inputs dropped since the last shard: record them as done
                    self._write_progress(self.tally.seal(self.tally.n_in, self.sealed_out))
        finally:
            self.file.abandon()  # type: ignore[union-attr]  # the shard opened next, unused
            self._lock.release()


def _is_progress(state: object) -> bool:
    """Whether `state` has the shape `_write_progress` gives it."""
    if not isinstance(state, dict) or not isinstance(state.get("tally"), dict):
        return False
    tally = state["tally"]
    return (
        isinstance(state.get("shards"), int)
        and all(isinstance(tally.get(k), int) and tally[k] >= 0 for k in ("in", "out"))
        and all(isinstance(tally.get(k), dict) for k in ("dropped", "rejected", "added"))
        and isinstance(tally.get("counts", {}), dict)
        and isinstance(tally.get("rejects_bytes", 0), int)
    )


class FolderLock:
    """An exclusive lock on writing rank `rank`'s shards into `folder`: flock on
    `.vecap-rank{R}.lock`, removed by `release` (a lock taken on a file that was
    removed meanwhile is taken again on the new one)."""

    def __init__(self, folder: str, rank: int):
        self.path = os.path.join(folder, f".vecap-rank{rank}.lock")
        busy = VecapError(
            f"'{folder}' is being written by another vecap run (rank {rank}): "
            "wait for it to end, or choose another -o"
        )
        self.fd = _locked(self.path, self.path, busy)

    def release(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.remove(self.path)
        os.close(self.fd)


def _locked(path: str, shown: str, busy: VecapError) -> int:
    """`path` opened for writing (created, not truncated) and flock'ed, or `busy`."""
    for _ in range(8):
        try:
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o666)
            except FileNotFoundError:
                os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
                fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o666)
        except OSError as err:
            raise write_error(shown, err) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise busy from None
        try:
            if os.path.samestat(os.fstat(fd), os.stat(path)):
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)  # renamed or removed by the run that held it just now: again
    raise busy


def staging_path(path: str) -> str:
    """Where `path` is written before being renamed into place: PATH.tmp.

    A special file (/dev/null, a FIFO) is written in place: renaming onto it
    would replace the device with a regular file.
    """
    if os.path.exists(path) and not os.path.isfile(path):
        return path
    return f"{path}.tmp"


def write_atomically(path: str, data: bytes) -> None:
    """Write a small file whole, or not at all (as every vecap output is): a full
    disk is one line, and leaves no PATH.tmp."""
    tmp = staging_path(path)
    f = open_staging(tmp, shown=path)
    try:
        f.write(data)
        f.flush()
        if tmp != path:
            os.replace(tmp, path)
    except OSError as err:
        with contextlib.suppress(OSError):
            f.close()
        if tmp != path:
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)
        raise write_error(path, err) from None
    f.close()


def open_staging(tmp: str, shown: str) -> BinaryIO:
    """`tmp` opened for writing and locked, so that two runs writing one output
    cannot mix their bytes: the second refuses. A special file (/dev/null) is
    opened as it is."""
    if tmp == shown:  # written in place: see staging_path
        return open_for_writing(tmp, shown)
    fd = _locked(tmp, shown, VecapError(f"'{shown}' is being written by another vecap run"))
    os.ftruncate(fd, 0)
    return os.fdopen(fd, "wb")


def open_for_writing(path: str, shown: str | None = None) -> BinaryIO:
    """Open `path` for writing, creating its directory; one clear error if it cannot be."""
    try:
        try:
            return open(path, "wb")
        except FileNotFoundError:
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            return open(path, "wb")
    except OSError as err:
        raise VecapError(f"cannot write '{shown or path}': {err.strerror}") from None


def write_file(path: str, data: bytes) -> None:
    """A whole small file (counts, a metadata list) at once: written as PATH.tmp,
    then renamed; '-' writes to stdout."""
    if path == "-":
        write_stdout(data)
        return
    write_atomically(path, data)


def write_stdout(data: bytes) -> None:
    """All of `data` to stdout. A pipe whose reader leaves mid-way takes part of one
    big write and says nothing (BufferedWriter returns): os.write's count shows the
    short write, and the next one raises EPIPE (a reader that left: exit 1, quietly)."""
    out = sys.stdout.buffer
    out.flush()
    try:
        fd = out.fileno()
    except (AttributeError, OSError, ValueError):  # not a file (a test's capture)
        out.write(data)
        out.flush()
        return
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def fingerprint(*parts: object) -> str:
    return hashlib.sha1(repr(parts).encode()).hexdigest()[:16]


def open_rejects(path: str) -> NamedStream:
    """A --rejects file, opened for writing (one line naming it when that fails)."""
    return NamedStream(open_for_writing(path), path)


class NamedStream:
    """A byte stream whose failed writes are one line naming its file (--rejects:
    written a line at a time, so the wrapper costs nothing that shows)."""

    def __init__(self, raw: BinaryIO, path: str):
        self.raw, self.path = raw, path

    def _do(self, call, *args):
        try:
            return call(*args)
        except OSError as err:
            raise write_error(self.path, err) from None

    def write(self, data: bytes) -> int:
        return self._do(self.raw.write, data)

    def flush(self) -> None:
        self._do(self.raw.flush)

    def close(self) -> None:
        self._do(self.raw.close)

    def tell(self) -> int:
        return self.raw.tell()

    def fileno(self) -> int:
        return self.raw.fileno()
