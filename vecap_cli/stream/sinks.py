"""Where samples go: stdout, one file, or numbered shards that a crash cannot corrupt.

Files are written under a temporary name and renamed when complete, so a name
that exists is a whole file. Sharded output also keeps a small progress file
per rank: which shards are finished, how many inputs they account for, and the
counts behind them, which is what `--resume` continues from.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
import re
import sys
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
        self.raw = open_for_writing(self.tmp, shown=path)

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
        if self.writer is not None:
            self.writer.close()
        for layer in self._layers:
            layer.close()
        if self.path == "-":
            self.raw.flush()
            return
        self.raw.close()
        if self.tmp != self.path:
            os.replace(self.tmp, self.path)

    def abandon(self) -> None:
        """Drop a partial file; on stdout, leave the stream visibly unterminated."""
        if self.writer is not None:
            self.writer.abort()
        for layer in self._layers:
            with contextlib.suppress(Exception):
                layer.close()
        if self.path != "-":
            self.raw.close()
            if self.tmp != self.path and os.path.exists(self.tmp):
                os.remove(self.tmp)


class Sink:
    """Stdout or one file; `write` returns False when the writer rejected the sample."""

    def __init__(self, spec: OutputSpec, tally: Tally, input_carrier: Callable[[], str]):
        self.spec, self.tally, self._input_carrier = spec, tally, input_carrier
        self.file: OutputFile | None = None if spec.sharded else OutputFile(spec.path)

    def _writer(self) -> JsonlWriter | TarWriter:
        assert self.file is not None
        if self.file.writer is not None:
            return self.file.writer
        fmt = self.spec.format or carrier_from_name(self.file.path) or self._input_carrier()
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
        samples = iter(samples)
        for sample in samples:
            self.write(sample)
            if type(self) is Sink and isinstance(self.file.writer, JsonlWriter):  # type: ignore[union-attr]
                self.file.writer.write_all(samples, self.tally)  # type: ignore[union-attr]
                return
            break
        for sample in samples:
            self.write(sample)

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

    def __init__(self, spec: OutputSpec, tally: Tally, input_carrier: Callable[[], str]):
        super().__init__(spec, tally, input_carrier)
        self.local = 0  # this rank's shard counter
        self.count = 0  # samples in the open shard
        self.sealed_out = 0
        self.last_idx = -1
        self.skip = 0  # inputs already accounted for by finished shards
        self.progress_path = os.path.join(
            os.path.dirname(self.shard_path(0)) or ".",
            f".vecap-progress-{spec.rank}-of-{spec.world_size}.json",
        )
        tally.track()
        if spec.resume:
            self._resume()
        elif os.path.exists(self.progress_path):
            os.remove(self.progress_path)
        self.file = OutputFile(self.shard_path(self.local))

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
        except (OSError, orjson.JSONDecodeError) as err:
            raise VecapError(f"cannot resume from '{self.progress_path}': {err}") from None
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

    def _seal(self, boundary: int) -> None:
        self._writer()
        self.file.commit()  # type: ignore[union-attr]
        self.sealed_out += self.count
        self.local += 1
        self._write_progress(self.tally.seal(boundary, self.sealed_out))
        self.count = 0
        self.file = OutputFile(self.shard_path(self.local))

    def _write_progress(self, sealed: dict) -> None:
        state = {"fingerprint": self.spec.fingerprint, "shards": self.local, "tally": sealed}
        tmp = f"{self.progress_path}.tmp"
        with open(tmp, "wb") as f:
            f.write(orjson.dumps(state))
        os.replace(tmp, self.progress_path)

    def close(self, ok: bool) -> None:
        if ok and self.count:
            self._seal(boundary=self.tally.n_in)
        elif ok:  # inputs dropped since the last shard: record them as done
            self._write_progress(self.tally.seal(self.tally.n_in, self.sealed_out))
        self.file.abandon()  # type: ignore[union-attr]  # the shard opened next, unused


def staging_path(path: str) -> str:
    """Where `path` is written before being renamed into place: PATH.tmp.

    A special file (/dev/null, a FIFO) is written in place: renaming onto it
    would replace the device with a regular file.
    """
    if os.path.exists(path) and not os.path.isfile(path):
        return path
    return f"{path}.tmp"


def write_atomically(path: str, data: bytes) -> None:
    """Write a small file whole, or not at all (as every vecap output is)."""
    tmp = staging_path(path)
    with open_for_writing(tmp, shown=path) as f:
        f.write(data)
    if tmp != path:
        os.replace(tmp, path)


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
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    write_atomically(path, data)


def fingerprint(*parts: object) -> str:
    return hashlib.sha1(repr(parts).encode()).hexdigest()[:16]
