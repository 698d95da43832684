"""Input specs to byte streams: files, globs, brace ranges, `pipe:CMD`, URLs, `-`.

The spec forms are webdataset's, so shard lists written for webdataset work here
unchanged. Compression and carrier (JSONL or tar) come from the name, or from
the first bytes when the name says nothing (stdin, pipes).
"""

from __future__ import annotations

import glob
import gzip
import io
import os
import subprocess
import sys
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import BinaryIO

from braceexpand import braceexpand

from vecap_cli.errors import VecapError
from vecap_cli.stream.sample import Source

_JSONL = (".jsonl", ".json", ".ndjson")
_TAR = (".tar", ".tgz")
_GLOB_CHARS = frozenset("*?[")


def expand(specs: Sequence[str]) -> list[str]:
    """Every input name the specs stand for, in order; a spec matching nothing is an error."""
    names: list[str] = []
    for spec in specs:
        for name in braceexpand(spec):
            if name == "-" or _is_stream_url(name):
                names.append(name)
            elif _GLOB_CHARS & set(name):
                matches = sorted(glob.glob(name))
                if not matches:
                    raise VecapError(f"no input file matches '{name}'")
                names.extend(matches)
            elif not os.path.isfile(name):
                why = "is a directory" if os.path.isdir(name) else "no such file"
                raise VecapError(f"cannot read '{name}': {why}")
            else:
                names.append(name)
    return names


def read_small_file(path: str, what: str = "") -> bytes:
    """A whole small file (counts, metadata), gunzipped when it is gzip; one clear
    line when it cannot be read. `what` names it in the message ("metadata ")."""
    try:
        with open(path, "rb") as f:
            data = f.read()
        return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data
    except OSError as err:
        raise VecapError(f"cannot read {what}'{path}': {err.strerror}") from None
    except (gzip.BadGzipFile, EOFError, zlib.error):
        raise VecapError(f"cannot read {what}'{path}': damaged gzip") from None


def _is_stream_url(name: str) -> bool:
    return name.startswith(("pipe:", "http://", "https://"))


def carrier_from_name(name: str) -> str | None:
    """'jsonl', 'tar', or None when the name does not say (stdin, pipes, odd suffixes)."""
    if name == "-" or name.startswith("pipe:"):
        return None
    stem = name[:-3] if name.endswith(".gz") else name
    if stem.endswith(_JSONL):
        return "jsonl"
    if stem.endswith(_TAR) or name.endswith(".tgz"):
        return "tar"
    return None


@contextmanager
def open_source(
    name: str, stdin: BinaryIO | None = None
) -> Iterator[tuple[Source, BinaryIO | None]]:
    """Open one input, decompressed; the stream is None when the input is empty.

    '-' reads `stdin` when given (a copy of stdin spooled for a second reading),
    else sys.stdin; either way it keeps the name '-' and resolves relative image
    paths against the working directory. The caller closes what it passed.
    """
    stdin = stdin or sys.stdin.buffer
    raw, proc = _open_raw(name, stdin)
    try:
        head, stream = _peek(raw)
        if head[:2] == b"\x1f\x8b":
            stream = gzip.GzipFile(fileobj=stream, mode="rb")  # type: ignore[assignment]
            head, stream = _peek(stream)
        carrier = carrier_from_name(name) or ("tar" if head[257:262] == b"ustar" else "jsonl")
        base = "" if name == "-" or _is_stream_url(name) else os.path.dirname(name)
        yield Source(name, carrier, base), (stream if head else None)
    except (OSError, EOFError, gzip.BadGzipFile) as err:
        raise VecapError(f"cannot read '{name}': {err}") from None
    finally:
        if raw is not stdin:
            raw.close()
        if proc is not None:
            _reap(name, proc)


def _open_raw(name: str, stdin: BinaryIO) -> tuple[BinaryIO, subprocess.Popen | None]:
    if name == "-":
        return stdin, None
    if _is_stream_url(name):
        cmd = name[5:] if name.startswith("pipe:") else f"curl -fsSL '{name}'"
        proc = subprocess.Popen(cmd, shell=True, stdout=subprocess.PIPE)
        return proc.stdout, proc  # type: ignore[return-value]
    try:
        return open(name, "rb"), None
    except OSError as err:
        raise VecapError(f"cannot read '{name}': {err.strerror}") from None


def _reap(name: str, proc: subprocess.Popen) -> None:
    rc = proc.wait()
    if rc != 0:
        raise VecapError(f"input command '{name}' exited with status {rc}")


class _Prefixed(io.RawIOBase):
    """`head` followed by the rest of `stream`: peeking without seeking (pipes cannot seek)."""

    def __init__(self, head: bytes, stream: BinaryIO):
        self._head = memoryview(head)
        self._stream = stream

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:  # type: ignore[override]
        if self._head:
            n = min(len(buf), len(self._head))
            buf[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        data = self._stream.read(len(buf))
        buf[: len(data)] = data
        return len(data)


def _peek(stream: BinaryIO, n: int = 512) -> tuple[bytes, BinaryIO]:
    head = b""
    while len(head) < n:
        chunk = stream.read(n - len(head))
        if not chunk:
            break
        head += chunk
    return head, io.BufferedReader(_Prefixed(head, stream), buffer_size=1 << 16)  # type: ignore[return-value]
