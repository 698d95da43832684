"""A real OpenAI-compatible chat-completions server on 127.0.0.1, for tests.

`POST /v1/chat/completions` answers with `answer(messages)`: a tiny local model
(`model_answer`) or a deterministic stand-in. It can fail the first N requests
with a status (503: a server warming up, then recovering; with `retry_after`,
the header that says when to come back), or those for which `fail_if(messages)`
holds (a request that fails whenever it is sent), answer each after a fixed
`latency` in seconds (a model's time, for benchmarks), or hold every
request after the first N until `release()` (so a test can kill its client
mid-run). Hostile modes, for tests/hostile: `drip` sends every reply a byte
at a time, that many seconds apart (status line and headers included);
`no_length` sends the body without a Content-Length, ended by closing;
`echo_headers` puts the request's headers in every error body (a server that
repeats the credentials it was sent); `gzip` compresses every body, asked or not. It listens on an ephemeral port and stops
with the `with` block. Every request body is kept in `bodies`; `answer_body`, when
given, answers from the whole body (its `seed` and `temperature`: `sampled_answer`).
"""

from __future__ import annotations

import atexit
import base64
import gzip as gzip_module
import hashlib
import io
import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class ChatServer:
    def __init__(
        self,
        answer: Callable[[list[dict]], str],
        fail_first: int = 0,
        fail_status: int = 503,
        hold_after: int | None = None,
        retry_after: str | None = None,
        drip: float = 0.0,
        no_length: bool = False,
        echo_headers: bool = False,
        gzip: bool = False,
        fail_if: Callable[[list[dict]], bool] | None = None,
        latency: float = 0.0,
        answer_body: Callable[[dict], str] | None = None,
    ):
        self.answer = answer
        self.answer_body = answer_body
        self.bodies: list[dict] = []
        self.fail_if = fail_if
        self.latency = latency
        self.fail_first, self.fail_status = fail_first, fail_status
        self.hold_after = hold_after
        self.retry_after = retry_after
        self.drip, self.no_length, self.echo_headers = drip, no_length, echo_headers
        self.gzip = gzip
        self._closed = threading.Event()
        self.requests = 0
        self.failed = 0
        self.headers: list[dict] = []
        self.clients: set[tuple] = set()  # client (host, port): one per connection
        self._lock = threading.Lock()
        self._model_lock = threading.Lock()  # the model answers one request at a time
        self._gate = threading.Event()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def __enter__(self) -> ChatServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._closed.set()
        self.release()
        self._httpd.shutdown()
        self._httpd.server_close()

    def release(self) -> None:
        self._gate.set()

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as real servers do
            # TCP_NODELAY, as real servers set it: else the body, written after the
            # headers, waits for the client's delayed ACK, 40 ms a request
            disable_nagle_algorithm = True

            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length))
                with server._lock:
                    server.requests += 1
                    n = server.requests
                    server.headers.append(dict(self.headers))
                    server.bodies.append(body)
                    server.clients.add(self.client_address)
                if self.path != "/v1/chat/completions":
                    return self._send(404, {"error": {"message": "not found"}})
                if n <= server.fail_first or (server.fail_if and server.fail_if(body["messages"])):
                    with server._lock:
                        server.failed += 1
                    extra = {"Retry-After": server.retry_after} if server.retry_after else {}
                    error = {"message": "warming up"}
                    if server.echo_headers:  # first: an error detail keeps the first 200 bytes
                        auth = self.headers.get("Authorization", "")
                        error = {"you-sent": {"authorization": auth, "path": self.path}, **error}
                    return self._send(server.fail_status, {"error": error}, extra)
                if server.hold_after is not None and n > server.hold_after:
                    server._gate.wait()
                if server.latency:
                    time.sleep(server.latency)  # each request its own: not under the model's lock
                with server._model_lock:
                    if server.answer_body is not None:
                        text = server.answer_body(body)
                    else:
                        text = server.answer(body["messages"])
                self._send(
                    200,
                    {
                        "id": f"cmpl-{n}",
                        "object": "chat.completion",
                        "model": body.get("model", ""),
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": text},
                                "finish_reason": "stop",
                            }
                        ],
                    },
                )

            def _send(self, status: int, payload: dict, headers: dict | None = None) -> None:
                data = json.dumps(payload).encode()
                if server.gzip:
                    data = gzip_module.compress(data)
                    headers = {**(headers or {}), "Content-Encoding": "gzip"}
                if server.drip:
                    return self._drip(status, data)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                if server.no_length:
                    self.send_header("Connection", "close")
                    self.close_connection = True
                else:
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                try:
                    self.wfile.write(data)
                except OSError:  # the client gave up reading: what a cap does
                    self.close_connection = True

            def _drip(self, status: int, data: bytes) -> None:
                head = (
                    f"HTTP/1.1 {status} OK\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(data)}\r\n\r\n"
                ).encode()
                self.close_connection = True
                for i in range(len(head) + len(data)):
                    if server._closed.wait(server.drip):
                        return
                    try:
                        self.wfile.write((head + data)[i : i + 1])
                        self.wfile.flush()
                    except OSError:  # the client gave up: the deadline did its job
                        return

        return Handler


def image_of(messages: list[dict]) -> bytes | None:
    """The bytes of the first inline image in a conversation."""
    for message in messages:
        content = message["content"]
        if isinstance(content, list):
            for part in content:
                if part.get("type") == "image_url":
                    url = part["image_url"]["url"]
                    return base64.b64decode(url.split(",", 1)[1])
    return None


def digest_answer(messages: list[dict]) -> str:
    """A deterministic caption naming what the request held (for resume tests)."""
    image = image_of(messages)
    data = image if image is not None else json.dumps(messages).encode()
    return f"a picture numbered {hashlib.sha1(data).hexdigest()[:8]}"


def sampled_answer(body: dict) -> str:
    """`digest_answer`, and the seed and temperature the request asked for: what a server
    that honours a per-request seed answers the same each time."""
    seed, temperature = body.get("seed"), body.get("temperature")
    return f"{digest_answer(body['messages'])} drawn with seed {seed} at {temperature}"


def model_answer(captioner=None, chat=None) -> Callable[[list[dict]], str]:
    """Answer with the tiny local model: a VLM for image requests, a chat LM for text ones."""

    def answer(messages: list[dict]) -> str:
        image = image_of(messages)
        if image is not None:
            from PIL import Image

            return captioner.generate([Image.open(io.BytesIO(image)).convert("RGB")])[0]
        return chat.generate([messages])[0]

    return answer


class SessionURL:
    """The URL of a `digest_answer` server started on first use and stopped at exit.

    For flag lists written before any test runs (tests/cli/test_contract.py CASES).
    """

    _server: ChatServer | None = None

    def __str__(self) -> str:
        if SessionURL._server is None:
            SessionURL._server = ChatServer(digest_answer).__enter__()
            atexit.register(SessionURL._server.__exit__, None, None, None)
        return SessionURL._server.url
