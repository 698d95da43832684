"""Where samples go: stdout, one file, or numbered shards that a crash cannot corrupt.

Files are written under a temporary name and renamed when complete, so a name
that exists is a whole file. Sharded output also keeps a small progress file
per rank: which shards are finished, how many inputs they account for, and the
counts behind them, which is what `--resume` continues from.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

import orjson

from vecap_cli.errors import VecapError
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

    @property
    def sharded(self) -> bool:
        return bool(_PATTERN.search(self.path))


def open_sink(spec: OutputSpec, tally: Tally, input_carrier: Callable[[], str]) -> Sink:
    if spec.sharded:
        return ShardedSink(spec, tally, input_carrier)
    if spec.resume:
        raise VecapError("--resume needs sharded output: -o 'out/%06d.tar'")
    return Sink(spec, tally, input_carrier)


class Sink:
    """Stdout or one file; `write` returns False when the writer rejected the sample."""

    def __init__(self, spec: OutputSpec, tally: Tally, input_carrier: Callable[[], str]):
        self.spec, self.tally, self._input_carrier = spec, tally, input_carrier
        self._writer: JsonlWriter | TarWriter | None = None
        self._file: BinaryIO | None = None
        self._tmp = ""
        if spec.path != "-" and not spec.sharded:
            self._file = self._create(spec.path)

    def format_for(self, path: str) -> str:
        return self.spec.format or carrier_from_name(path) or self._input_carrier()

    def _create(self, path: str) -> BinaryIO:
        self._tmp = f"{path}.tmp"
        try:
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            return open(self._tmp, "wb")
        except OSError as err:
            raise VecapError(f"cannot write '{path}': {err.strerror}") from None

    def _open_writer(self, path: str, stream: BinaryIO) -> JsonlWriter | TarWriter:
        fmt = self.format_for(path)
        if path.endswith(".gz"):
            stream = gzip.GzipFile(fileobj=stream, mode="wb", mtime=0)  # type: ignore[assignment]
        if fmt == "tar":
            if path == "-" and stream.isatty():
                raise VecapError(
                    "refusing to write a tar stream to a terminal: use -o FILE or a pipe"
                )
            return TarWriter(stream, self.tally)
        rel_to = os.path.dirname(os.path.abspath(path)) if path != "-" else ""
        return JsonlWriter(stream, self.spec.images_dir, rel_to)

    def write(self, sample: Sample) -> bool:
        if self._writer is None:
            stream = self._file or sys.stdout.buffer
            self._writer = self._open_writer(self.spec.path, stream)
        if self._writer.write(sample):
            self.tally.n_out += 1
            return True
        return False

    def close(self, ok: bool) -> None:
        if ok and self._writer is None:  # no samples: still a valid (empty) file
            self._writer = self._open_writer(self.spec.path, self._file or sys.stdout.buffer)
        self._finish(self._writer, self._file, self._tmp, self.spec.path, ok)
        self._writer = None

    @staticmethod
    def _finish(writer, file, tmp: str, path: str, ok: bool) -> None:
        try:
            if writer is not None and ok:
                writer.close()
            if file is not None:
                file.close()
                if ok:
                    os.replace(tmp, path)
        finally:
            if file is not None and not ok and os.path.exists(tmp):
                os.remove(tmp)


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
        self._file = self._create(self.shard_path(self.local))

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
        if self._writer is None:
            self._writer = self._open_writer(self.shard_path(self.local), self._file)  # type: ignore[arg-type]
        if not self._writer.write(sample):
            return False
        self.tally.n_out += 1
        self.count += 1
        self.last_idx = sample.idx
        return True

    def _seal(self, boundary: int) -> None:
        path = self.shard_path(self.local)
        if self._writer is None:
            self._writer = self._open_writer(path, self._file)  # type: ignore[arg-type]
        self._finish(self._writer, self._file, self._tmp, path, ok=True)
        self.sealed_out += self.count
        self.local += 1
        self._write_progress(self.tally.seal(boundary, self.sealed_out))
        self._writer, self.count = None, 0
        self._file = self._create(self.shard_path(self.local))

    def _write_progress(self, sealed: dict) -> None:
        state = {"fingerprint": self.spec.fingerprint, "shards": self.local, "tally": sealed}
        tmp = f"{self.progress_path}.tmp"
        with open(tmp, "wb") as f:
            f.write(orjson.dumps(state))
        os.replace(tmp, self.progress_path)

    def close(self, ok: bool) -> None:
        if not ok:
            self._finish(self._writer, self._file, self._tmp, "", ok=False)
            return
        if self.count:
            self._seal(boundary=self.tally.n_in)
        else:  # inputs dropped since the last shard: record them as done
            self._write_progress(self.tally.seal(self.tally.n_in, self.sealed_out))
        self._finish(None, self._file, self._tmp, "", ok=False)  # the unused next shard


def fingerprint(*parts: object) -> str:
    return hashlib.sha1(repr(parts).encode()).hexdigest()[:16]
