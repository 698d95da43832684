"""Any OpenAI-compatible chat-completions server (vLLM, SGLang, ...) as a backend.

Requests go out `concurrency` at a time from a thread pool through one shared
`httpx.Client`: a thread-safe connection pool sized to the concurrency, so each
worker reuses a kept-alive connection. 429, 5xx, timeouts and dropped
connections are retried with exponential backoff and jitter (honouring
Retry-After); what still fails after the last retry is a `Failed` for that item
alone.

Every request is bounded: `timeout` is a deadline for the whole request
(connect, send, wait, read), not for each read, so a server that drips a byte
every half second times out like a silent one; and the reply is streamed and
given up past `max_reply_bytes` (`reply-too-large`, not retried). Credentials
in the URL go out as basic auth and, like the API key, are scrubbed from every
detail and message (`endpoint.redact`). A server that fails many requests in a row is down, not flaky: that
stops the run (`VecapError`), which `--resume` continues once it is back.

The retry loop is ours, not a library's: it is policy (which failures count
towards "the server is down", what becomes a per-item `Failed`), a few lines
that a retry decorator would not shorten.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpcore
import httpx

from vecap_cli.errors import VecapError
from vecap_cli.generate import endpoint
from vecap_cli.generate.base import Failed, Prompted
from vecap_cli.rand import uniform

_RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class ServerSpec:
    base_url: str  # up to and including /v1
    model: str  # the served model name
    max_new_tokens: int = 64
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = 16
    retries: int = 5
    timeout: float = 120.0  # seconds for the whole request, first byte sent to last read
    max_reply_bytes: int = 1 << 20  # a chat completion of 77 tokens is ~1 KB
    backoff: float = 0.5  # first wait; doubles each retry, +/- 25% jitter
    max_backoff: float = 30.0
    temperature: float = 0.0  # 0: greedy; above: sampled, with each request's seed


class _Retry(Exception):
    """A failure worth another try: the server may answer next time."""

    def __init__(self, reason: str, detail: str, wait: float | None = None):
        super().__init__(detail)
        self.reason, self.detail, self.wait = reason, detail, wait


class _Final(Exception):
    """A failure no retry would change (a 4xx, an answer that is not a completion)."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


class ChatClient:
    def __init__(self, spec: ServerSpec):
        try:
            endpoint.check(spec.base_url)
        except ValueError as err:
            raise VecapError(f"--api-base {err}") from None
        self.spec = spec
        self.shown = endpoint.redact(spec.base_url.rstrip("/"))
        base, user, password = endpoint.credentials(spec.base_url.rstrip("/"))
        self._url = f"{base}/chat/completions"
        # Identity encoding: the size cap counts what arrives, not what a gzip bomb inflates to.
        headers = {"Content-Type": "application/json", "Accept-Encoding": "identity"}
        key = os.environ.get(spec.api_key_env, "")
        if key:
            headers["Authorization"] = f"Bearer {key}"
        # What a server might echo: the key, the user, the password, and the basic-auth
        # header made of them; longest first, so a password that holds the user goes whole.
        basic = base64.b64encode(f"{user}:{password}".encode()).decode() if user or password else ""
        secrets = {s for s in (key, user, password, basic) if s}
        self._secrets = sorted(secrets, key=len, reverse=True)
        self._http = httpx.Client(
            headers=headers,
            auth=httpx.BasicAuth(user, password) if user or password else None,
            timeout=httpx.Timeout(spec.timeout),
            transport=_deadline_transport(spec.concurrency),
            trust_env=False,  # a local inference server: no proxy from the environment
        )
        self._pool = ThreadPoolExecutor(spec.concurrency, thread_name_prefix="vecap-http")
        self._lock = threading.Lock()
        self._down_streak = 0  # requests in a row that failed for want of a server
        self._down_limit = max(8, 2 * spec.concurrency)
        self.stats = {"requests": 0, "retries": 0}

    # -- one request ----------------------------------------------------------
    def complete(self, messages: list[dict], seed: int | None = None) -> str | Failed:
        request = {
            "model": self.spec.model,
            "messages": messages,
            "max_tokens": self.spec.max_new_tokens,
            "temperature": 0,  # greedy
        }
        if seed is not None and self.spec.temperature > 0:
            # vLLM and SGLang draw a request with a seed from its own generator:
            # the same answer each time, whatever else the server is running
            request.update(temperature=self.spec.temperature, seed=seed)
        body = json.dumps(request).encode()
        last: _Retry | None = None
        for attempt in range(self.spec.retries + 1):
            if attempt:
                self._sleep(attempt, last)
            try:
                text = self._post(body)
            except _Retry as err:
                last = err
                continue
            except _Final as err:
                self._note(down=False)
                return Failed(err.reason, self.scrub(err.detail))
            self._note(down=False)
            return text
        self._note(down=True, last=last)
        assert last is not None
        return Failed(last.reason, self.scrub(last.detail))

    def scrub(self, text: str) -> str:
        """`text` without the API key, user or password: a server may echo what it was sent.
        A short one (a one-letter user) only where it stands alone, so it does not
        blank every such letter of the message; a long one wherever it is."""
        for secret in self._secrets:
            if len(secret) >= 8:
                text = text.replace(secret, "***")
            else:
                text = re.sub(rf"(?<!\w){re.escape(secret)}(?!\w)", "***", text)
        return text

    def _sleep(self, attempt: int, last: _Retry | None) -> None:
        with self._lock:
            self.stats["retries"] += 1
        wait = self.spec.backoff * 2 ** (attempt - 1)
        wait *= 0.75 + 0.5 * uniform(attempt, threading.get_ident(), time.monotonic_ns())
        if last is not None and last.wait is not None:
            wait = max(wait, last.wait)
        time.sleep(min(wait, self.spec.max_backoff))

    def _note(self, down: bool, last: _Retry | None = None) -> None:
        with self._lock:
            self._down_streak = self._down_streak + 1 if down else 0
            if self._down_streak >= self._down_limit and last is not None:
                detail = self.scrub(last.detail)
                raise VecapError(
                    f"the server at {self.shown} failed {self._down_streak} requests "
                    f"in a row ({last.reason}: {detail}); rerun with --resume when it is back"
                )

    def _post(self, body: bytes) -> str:
        with self._lock:
            self.stats["requests"] += 1
        _deadline.at = time.monotonic() + self.spec.timeout
        try:
            with self._http.stream("POST", self._url, content=body) as response:
                return _content(self._body(response))
        except httpx.TimeoutException:
            raise _Retry("timeout", f"no whole answer within {self.spec.timeout:g}s") from None
        except httpx.TransportError as err:  # refused, reset, closed mid-answer
            raise _Retry("connection", str(err) or type(err).__name__) from None
        finally:
            _deadline.at = None

    def _body(self, response: httpx.Response) -> bytes:
        """The reply body, read no further than the cap; a failed status as _Retry or _Final."""
        if response.status_code != 200:
            detail = _head(response, 200).decode("utf-8", "replace")
            if response.status_code in _RETRY_STATUS:
                wait = _retry_after(response.headers.get("Retry-After"))
                raise _Retry(f"http-{response.status_code}", detail, wait)
            raise _Final(f"http-{response.status_code}", detail)
        cap = self.spec.max_reply_bytes
        too_large = _Final("reply-too-large", f"the reply is over --max-reply-bytes {cap}")
        length = response.headers.get("Content-Length", "")
        if length.isdigit() and int(length) > cap:
            raise too_large
        data = _head(response, cap + 1)
        if len(data) > cap:
            raise too_large
        return data

    # -- a batch --------------------------------------------------------------
    def generate(
        self, conversations: list[list[dict]], seeds: list[int] | None = None
    ) -> list[str | Failed]:
        if seeds is None:
            return list(self._pool.map(self.complete, conversations))
        return list(self._pool.map(self.complete, conversations, seeds))

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._http.close()


def _head(response: httpx.Response, n: int) -> bytes:
    """At most the first `n` bytes of the body as they arrived (more are not read).

    Raw bytes: httpx would inflate a gzip/deflate/br body chunk by chunk without a
    bound, whatever Accept-Encoding asked for, so an encoded reply is refused."""
    if response.headers.get("Content-Encoding", "identity").strip().lower() != "identity":
        raise _Final("bad-response", "the reply is compressed, though vecap asked for none")
    buf = bytearray()
    for chunk in response.iter_raw():
        buf += chunk
        if len(buf) >= n:
            break
    return bytes(buf[:n])


# -- the whole-request deadline ------------------------------------------------
# httpx bounds each read, connect and write, never a request. A request runs in
# one worker thread from start to end, so the thread's deadline is set around it
# and every socket operation underneath waits at most the time left before it.

_deadline = threading.local()


def _left(timeout: float | None, expired: type[Exception]) -> float | None:
    at = getattr(_deadline, "at", None)
    if at is None:
        return timeout
    left = at - time.monotonic()
    if left <= 0:
        raise expired("the request's deadline has passed")
    return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):
    def __init__(self, stream: httpcore.NetworkStream):
        self._stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, _left(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, _left(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(self, ssl_context, server_hostname=None, timeout=None):
        stream = self._stream.start_tls(
            ssl_context, server_hostname, _left(timeout, httpcore.ConnectTimeout)
        )
        return _DeadlineStream(stream)

    def get_extra_info(self, info: str):
        return self._stream.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    def __init__(self, backend: httpcore.NetworkBackend):
        self._backend = backend

    def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        timeout = _left(timeout, httpcore.ConnectTimeout)
        stream = self._backend.connect_tcp(host, port, timeout, local_address, socket_options)
        return _DeadlineStream(stream)

    def connect_unix_socket(self, path, timeout=None, socket_options=None):
        timeout = _left(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._backend.connect_unix_socket(path, timeout, socket_options))

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


def _deadline_transport(concurrency: int) -> httpx.HTTPTransport:
    """httpx's transport, a connection pool sized to the concurrency, over deadline sockets.

    httpx takes no network backend, so it goes into its httpcore pool
    (private; tests/hostile/test_generation.py's drip server fails if it moves).
    """
    transport = httpx.HTTPTransport(
        limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
        trust_env=False,
    )
    pool = transport._pool
    pool._network_backend = _DeadlineBackend(pool._network_backend)
    return transport


def _retry_after(value: str | None) -> float | None:
    try:
        return float(value) if value else None
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff


def _content(data: bytes) -> str:
    try:
        choice = json.loads(data)["choices"][0]
        content = choice["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        raise _Final("bad-response", data[:200].decode("utf-8", "replace")) from None
    if isinstance(content, list):  # content parts
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    if not isinstance(content, str):
        raise _Final("bad-response", "message content is not text")
    return " ".join(content.split())


# -- the two uses ----------------------------------------------------------------

_MIME = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "GIF": "image/gif"}


def data_url(data: bytes, limits=None) -> str:
    """The image inline as a base64 data URL; decoded first (within the byte and
    pixel caps), so a broken or oversized image is rejected here, not by the server.
    A format servers may not read (TIFF, BMP...), or a JPEG only the draft scale
    brought under the pixel cap, is sent re-encoded as PNG."""
    from vecap_cli.stream.images import DEFAULT_LIMITS, load_checked

    image, scaled = load_checked(data, limits or DEFAULT_LIMITS)
    with image:
        mime = _MIME.get(image.format or "")
        if mime is None or scaled:
            buf = io.BytesIO()
            image.convert("RGB").save(buf, format="PNG")
            data, mime = buf.getvalue(), "image/png"
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


class OpenAICaptioner:
    def __init__(self, spec: ServerSpec, prompt: str):
        self.client = ChatClient(spec)
        self.prompt = prompt

    def prepare(self, data: bytes) -> str:
        return data_url(data)

    def generate(self, urls: list, seeds: list[int] | None = None) -> list[str | Failed]:
        """`urls`: data URLs, or `Prompted` ones that bring their own prompt."""
        return self.client.generate([self._conversation(url) for url in urls], seeds)

    def _conversation(self, url) -> list[dict]:
        url, prompt = (url.item, url.prompt) if isinstance(url, Prompted) else (url, self.prompt)
        content = [
            {"type": "image_url", "image_url": {"url": url}},
            {"type": "text", "text": prompt},
        ]
        return [{"role": "user", "content": content}]


class OpenAIChat:
    def __init__(self, spec: ServerSpec):
        self.client = ChatClient(spec)

    def generate(
        self, conversations: list[list[dict]], seeds: list[int] | None = None
    ) -> list[str | Failed]:
        return self.client.generate(conversations, seeds)
