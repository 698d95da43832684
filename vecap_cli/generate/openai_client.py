"""Any OpenAI-compatible chat-completions server (vLLM, SGLang, ...) as a backend.

Requests go out `concurrency` at a time from a thread pool, each thread keeping
one persistent connection (the standard library's `http.client`: one POST with
a JSON body needs nothing more). 429, 5xx, timeouts and dropped connections are
retried with exponential backoff (honouring Retry-After); what still fails
after the last retry is a `Failed` for that item alone. A server that fails
many requests in a row is down, not flaky: that stops the run (`VecapError`),
which `--resume` continues once it is back.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import urlsplit

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
    def __init__(self, reason: str, detail: str, wait: float | None = None):
        super().__init__(detail)
        self.reason, self.detail, self.wait = reason, detail, wait


class ChatClient:
    def __init__(self, spec: ServerSpec):
        url = urlsplit(spec.base_url.rstrip("/"))
        if url.scheme not in ("http", "https") or not url.hostname:
            raise VecapError(f"--api-base '{spec.base_url}' is not an http(s) URL")
        self.spec = spec
        self._https = url.scheme == "https"
        self._host, self._port = url.hostname, url.port
        self._path = f"{url.path}/chat/completions"
        self._headers = {"Content-Type": "application/json"}
        key = os.environ.get(spec.api_key_env, "")
        if key:
            self._headers["Authorization"] = f"Bearer {key}"
        self._local = threading.local()
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

    def _connection(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            conn = cls(self._host, self._port, timeout=self.spec.timeout)
            self._local.conn = conn
        return conn

    def _post(self, body: bytes) -> str:
        with self._lock:
            self.stats["requests"] += 1
        conn = self._connection()
        try:
            conn.request("POST", self._path, body, self._headers)
            response = conn.getresponse()
            data = response.read()
        except TimeoutError as err:
            self._drop_connection()
            raise _Retry("timeout", str(err) or "timed out") from None
        except (OSError, http.client.HTTPException) as err:
            self._drop_connection()
            raise _Retry("connection", str(err) or type(err).__name__) from None
        if response.status != 200:
            detail = data[:200].decode("utf-8", "replace")
            if response.status in _RETRY_STATUS:
                raise _Retry(f"http-{response.status}", detail, _retry_after(response))
            raise _Final(f"http-{response.status}", detail)
        return _content(data)

    def _drop_connection(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    # -- a batch --------------------------------------------------------------
    def generate(self, conversations: list[list[dict]]) -> list[str | Failed]:
        return list(self._pool.map(self.complete, conversations))

    def close(self) -> None:
        self._pool.shutdown(wait=True)


class _Final(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def _retry_after(response) -> float | None:
    value = response.getheader("Retry-After")
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


def data_url(data: bytes) -> str:
    """The image inline as a base64 data URL; decoded first, so a broken image is caught here."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        image.load()
        mime = _MIME.get(image.format or "")
        if mime is None:  # a format servers may not read (TIFF, BMP, ...): send PNG
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
