"""Any OpenAI-compatible chat-completions server (vLLM, SGLang, ...) as a backend.

Requests go out `concurrency` at a time from a thread pool through one shared
`httpx.Client`: a thread-safe connection pool sized to the concurrency, so each
worker reuses a kept-alive connection. 429, 5xx, timeouts and dropped
connections are retried with exponential backoff and jitter (honouring
Retry-After); what still fails after the last retry is a `Failed` for that item
alone. A server that fails many requests in a row is down, not flaky: that
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
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx

from vecap_cli.errors import VecapError
from vecap_cli.generate.base import Failed
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
    timeout: float = 120.0
    backoff: float = 0.5  # first wait; doubles each retry, +/- 25% jitter
    max_backoff: float = 30.0


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
        url = urlsplit(spec.base_url.rstrip("/"))
        if url.scheme not in ("http", "https") or not url.hostname:
            raise VecapError(f"--api-base '{spec.base_url}' is not an http(s) URL")
        self.spec = spec
        self._url = f"{spec.base_url.rstrip('/')}/chat/completions"
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(spec.api_key_env, "")
        if key:
            headers["Authorization"] = f"Bearer {key}"
        self._http = httpx.Client(
            headers=headers,
            timeout=httpx.Timeout(spec.timeout),
            limits=httpx.Limits(
                max_connections=spec.concurrency, max_keepalive_connections=spec.concurrency
            ),
            trust_env=False,  # a local inference server: no proxy from the environment
        )
        self._pool = ThreadPoolExecutor(spec.concurrency, thread_name_prefix="vecap-http")
        self._lock = threading.Lock()
        self._down_streak = 0  # requests in a row that failed for want of a server
        self._down_limit = max(8, 2 * spec.concurrency)
        self.stats = {"requests": 0, "retries": 0}

    # -- one request ----------------------------------------------------------
    def complete(self, messages: list[dict]) -> str | Failed:
        body = json.dumps(
            {
                "model": self.spec.model,
                "messages": messages,
                "max_tokens": self.spec.max_new_tokens,
                "temperature": 0,  # greedy
            }
        ).encode()
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
                return Failed(err.reason, err.detail)
            self._note(down=False)
            return text
        self._note(down=True, last=last)
        assert last is not None
        return Failed(last.reason, last.detail)

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
                raise VecapError(
                    f"the server at {self.spec.base_url} failed {self._down_streak} requests "
                    f"in a row ({last.reason}: {last.detail}); rerun with --resume when it is back"
                )

    def _post(self, body: bytes) -> str:
        with self._lock:
            self.stats["requests"] += 1
        try:
            response = self._http.post(self._url, content=body)
        except httpx.TimeoutException as err:
            raise _Retry("timeout", str(err) or "timed out") from None
        except httpx.TransportError as err:  # refused, reset, closed mid-answer
            raise _Retry("connection", str(err) or type(err).__name__) from None
        if response.status_code != 200:
            detail = response.content[:200].decode("utf-8", "replace")
            if response.status_code in _RETRY_STATUS:
                wait = _retry_after(response.headers.get("Retry-After"))
                raise _Retry(f"http-{response.status_code}", detail, wait)
            raise _Final(f"http-{response.status_code}", detail)
        return _content(response.content)

    # -- a batch --------------------------------------------------------------
    def generate(self, conversations: list[list[dict]]) -> list[str | Failed]:
        return list(self._pool.map(self.complete, conversations))

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._http.close()


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
    from vecap_cli.stream.images import DEFAULT_LIMITS, ImageRejected, open_checked

    image, scaled = open_checked(data, limits or DEFAULT_LIMITS)
    try:
        with image:
            image.load()
            mime = _MIME.get(image.format or "")
            if mime is None or scaled:
                buf = io.BytesIO()
                image.convert("RGB").save(buf, format="PNG")
                data, mime = buf.getvalue(), "image/png"
    except Exception as err:  # truncated data, bad chunks, a decoder's odd error
        raise ImageRejected("bad-image", f"{type(err).__name__}: {err}") from None
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


class OpenAICaptioner:
    def __init__(self, spec: ServerSpec, prompt: str):
        self.client = ChatClient(spec)
        self.prompt = prompt

    def prepare(self, data: bytes) -> str:
        return data_url(data)

    def generate(self, urls: list[str]) -> list[str | Failed]:
        return self.client.generate(
            [
                [
                    {
                        "role": "user",
                        "content": [
                            {"type": "image_url", "image_url": {"url": url}},
                            {"type": "text", "text": self.prompt},
                        ],
                    }
                ]
                for url in urls
            ]
        )


class OpenAIChat:
    def __init__(self, spec: ServerSpec):
        self.client = ChatClient(spec)

    def generate(self, conversations: list[list[dict]]) -> list[str | Failed]:
        return self.client.generate(conversations)
