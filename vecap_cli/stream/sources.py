"""Input specs to byte streams: files, globs, brace ranges, `pipe:CMD`, URLs, `-`.

The spec forms are webdataset's, so shard lists written for webdataset work here
unchanged. Compression and carrier (JSONL or tar) come from the name, or from
the first bytes when the name says nothing (stdin, pipes).

Only `pipe:COMMAND` runs a shell: that is its explicit purpose. An http(s) URL
is fetched in-process (httpx, streaming) with bounded waits, never through a
shell, and is named in messages without its user:password.
"""

from __future__ import annotations

import glob
import gzip
import io
import os
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from typing import TYPE_CHECKING, BinaryIO

from braceexpand import braceexpand

from vecap_cli.errors import VecapError, first_line
from vecap_cli.stream.sample import Source

if TYPE_CHECKING:
    from vecap_cli.stream.progress import Meter

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


def _is_http(name: str) -> bool:
    return name.startswith(("http://", "https://"))


def redact(name: str) -> str:
    """`name` as it may be shown: in anything holding a URL (an input, a `pipe:`
    command, --api-base), everything before the last '@' and the query are hidden:
    user and password, and the keys of presigned or `?key=` URLs.

    Over-hiding is fine (an '@' in a query hides the host); no parse is needed,
    so even a URL that does not parse is shown safely.
    """
    if "://" not in name:
        return name
    head, at, rest = name.rpartition("@")
    if at:
        scheme = head.split("//", 1)[0] + "//" if "//" in head else ""
        name = f"{scheme}***@{rest}"
    base, query, _ = name.partition("?")
    return base + ("?***" if query else "")


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
    name: str,
    stdin: BinaryIO | None = None,
    opened: Callable[[BinaryIO], None] | None = None,
) -> Iterator[tuple[Source, BinaryIO | None]]:
    """Open one input, decompressed; the stream is None when the input is empty.
    `opened(raw)`: told the stream as opened, before any gunzip (the progress
    meter asks it its position).

    '-' reads `stdin` when given (a copy of stdin spooled for a second reading),
    else sys.stdin; either way it keeps the name '-' and resolves relative image
    paths against the working directory. The caller closes what it passed.
    """
    stdin = stdin or sys.stdin.buffer
    shown = redact(name)
    raw, finish = _open_raw(name, stdin)
    if opened is not None:
        opened(raw)
    try:
        head, stream = _peek(raw)
        if head[:2] == b"\x1f\x8b":
            stream = gzip.GzipFile(fileobj=stream, mode="rb")  # type: ignore[assignment]
            head, stream = _peek(stream)
        carrier = carrier_from_name(name) or ("tar" if head[257:262] == b"ustar" else "jsonl")
        base = "" if name == "-" or _is_stream_url(name) else os.path.dirname(name)
        yield Source(shown, carrier, base), (stream if head else None)
    except (OSError, EOFError, gzip.BadGzipFile) as err:
        raise VecapError(f"cannot read '{shown}': {err}") from None
    finally:
        if raw is not stdin:
            raw.close()
        if finish is not None:
            finish()


def open_each(
    names: Sequence[str],
    carriers: list[str],
    log: Callable[[str], None],
    stdin: BinaryIO | None,
    meter: Meter | None = None,
) -> Iterator[tuple[Source, BinaryIO]]:
    """Each input opened in turn (closed when the next is asked for), its carrier
    noted in `carriers` (the output's format may follow the first); an empty
    input is skipped with a warning (stdin without one). `meter`: told which
    input is being read, and its file."""
    for index, name in enumerate(names):
        opened = None if meter is None else partial(meter.reading, index)
        with open_source(name, stdin, opened) as (source, stream):
            carriers.append(source.carrier)
            if stream is None:
                if name != "-":
                    log(f"warning: '{name}' is empty")
                continue
            yield source, stream


def _open_raw(name: str, stdin: BinaryIO) -> tuple[BinaryIO, Callable[[], None] | None]:
    """The raw byte stream, and what to call after closing it (None: nothing)."""
    if name == "-":
        return stdin, None
    if _is_http(name):
        return _fetch(name), None
    if name.startswith("pipe:"):  # webdataset's explicit opt-in to a shell command
        proc = subprocess.Popen(name[5:], shell=True, stdout=subprocess.PIPE)
        return proc.stdout, lambda: _reap(name, proc)  # type: ignore[return-value]
    try:
        return open(name, "rb"), None
    except OSError as err:
        raise VecapError(f"cannot read '{name}': {err.strerror}") from None


def _reap(name: str, proc: subprocess.Popen) -> None:
    rc = proc.wait()
    if rc != 0:
        raise VecapError(f"input command '{name}' exited with status {rc}")


# Waits on a URL input: connecting, and each read. A shard may be large, so the
# whole request has no fixed deadline; instead a transfer slower than MIN_RATE
# on average after RATE_GRACE seconds is given up (a server that trickles a byte
# every few seconds would otherwise defeat the read timeout for ever).
CONNECT_TIMEOUT, READ_TIMEOUT = 15.0, 60.0
MIN_RATE, RATE_GRACE = 1024, 60.0  # bytes per second, seconds


def _fetch(url: str) -> BinaryIO:
    """A streaming GET of `url`; one VecapError line naming it (redacted) on failure."""
    import httpx

    shown = redact(url)
    client = httpx.Client(
        timeout=httpx.Timeout(READ_TIMEOUT, connect=CONNECT_TIMEOUT), follow_redirects=True
    )
    try:
        response = client.send(client.build_request("GET", url), stream=True)
    except (httpx.HTTPError, httpx.InvalidURL, ValueError) as err:
        client.close()
        raise VecapError(f"cannot read '{shown}': {_http_error(err, url)}") from None
    if response.status_code >= 400:
        response.close()
        client.close()
        raise VecapError(
            f"cannot read '{shown}': HTTP {response.status_code} {response.reason_phrase}"
        )
    return io.BufferedReader(_HttpBody(url, client, response), buffer_size=1 << 16)  # type: ignore[return-value]


def _http_error(err: Exception, url: str) -> str:
    """The first line of an httpx error, with the URL's secrets (user, password, query) masked."""
    text = first_line(err).replace(url, redact(url))
    userinfo = url.partition("://")[2].partition("/")[0].rpartition("@")[0]
    query = url.partition("?")[2]
    for secret in (userinfo, query):
        if secret:
            text = text.replace(secret, "***")
    return text


class _HttpBody(io.RawIOBase):
    """An httpx streaming response as a raw binary stream, with the rate floor."""

    def __init__(self, url: str, client, response):
        self._url, self._client, self._response = url, client, response
        self._chunks = response.iter_bytes()
        self._left = memoryview(b"")
        self._started, self._total = time.monotonic(), 0

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:  # type: ignore[override]
        if not self._left:
            self._left = memoryview(self._next())
        n = min(len(buf), len(self._left))
        buf[:n] = self._left[:n]
        self._left = self._left[n:]
        return n

    def _next(self) -> bytes:
        import httpx

        try:
            chunk = next(self._chunks, b"")
        except httpx.HTTPError as err:
            raise OSError(_http_error(err, self._url)) from None
        self._total += len(chunk)
        elapsed = time.monotonic() - self._started
        if chunk and elapsed > RATE_GRACE and self._total < MIN_RATE * elapsed:
            raise OSError(f"transfer too slow ({self._total:,} bytes in {elapsed:.0f} s)")
        return chunk

    def close(self) -> None:
        if not self.closed:
            self._response.close()
            self._client.close()
        super().close()


class _Prefixed(io.RawIOBase):
    """`head` followed by the rest of `stream`: peeking without seeking (pipes cannot seek)."""

    def __init__(self, head: bytes, stream: BinaryIO):
        self._head = memoryview(head)
        # read1: what has arrived, not a full buffer; a slow producer upstream in a
        # pipe would otherwise hold each record back until 64 KiB had piled up
        self._read = getattr(stream, "read1", stream.read)

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:  # type: ignore[override]
        if self._head:
            n = min(len(buf), len(self._head))
            buf[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        data = self._read(len(buf))
        buf[: len(data)] = data
        return len(data)


def _peek(stream: BinaryIO, n: int = 512) -> tuple[bytes, BinaryIO]:
    """The first bytes (up to `n`: enough to see a tar header), and the whole stream.

    Stops early at a whole text line: a tar header is NUL-padded, so that is JSONL,
    and a slow producer's first record goes on at once.
    """
    read = getattr(stream, "read1", stream.read)
    head = b""
    while len(head) < n:
        chunk = read(n - len(head))
        if not chunk:
            break
        head += chunk
        line, newline, _ = head.partition(b"\n")
        if newline and b"\0" not in line:
            break
    return head, io.BufferedReader(_Prefixed(head, stream), buffer_size=1 << 16)  # type: ignore[return-value]
