"""The OpenAI-compatible client against a real HTTP server on 127.0.0.1."""

import pytest

from tests.openai_server import ChatServer
from vecap_cli.errors import VecapError
from vecap_cli.generate import openai_client
from vecap_cli.generate.base import Failed
from vecap_cli.generate.openai_client import ChatClient, ServerSpec


def echo(messages):
    return "  echo:\n" + messages[-1]["content"] + "  "


def client(url, **kw):
    return ChatClient(ServerSpec(base_url=url, model="tiny", backoff=0.01, **kw))


def convs(n):
    return [[{"role": "user", "content": f"q{i}"}] for i in range(n)]


def test_answers_come_back_in_order_whitespace_folded():
    with ChatServer(echo) as server:
        out = client(server.url, concurrency=4).generate(convs(20))
    assert out == [f"echo: q{i}" for i in range(20)]
    assert server.requests == 20


def test_a_server_that_fails_then_recovers_loses_nothing():
    with ChatServer(echo, fail_first=6, fail_status=503) as server:
        c = client(server.url, concurrency=3, retries=5)
        out = c.generate(convs(10))
    assert out == [f"echo: q{i}" for i in range(10)]
    assert server.failed == 6 and c.stats["retries"] == 6


def test_429_is_retried_too():
    with ChatServer(echo, fail_first=2, fail_status=429) as server:
        assert client(server.url, concurrency=1).generate(convs(2)) == ["echo: q0", "echo: q1"]


def test_workers_share_at_most_concurrency_kept_alive_connections():
    with ChatServer(echo) as server:
        out = client(server.url, concurrency=3).generate(convs(30))
    assert out == [f"echo: q{i}" for i in range(30)]
    assert 1 <= len(server.clients) <= 3  # not a connection per request


def test_retry_after_is_honoured_over_a_shorter_backoff(monkeypatch):
    waits = []
    monkeypatch.setattr(openai_client.time, "sleep", waits.append)
    with ChatServer(echo, fail_first=2, fail_status=429, retry_after="7") as server:
        out = client(server.url, concurrency=1).generate(convs(1))
    assert out == ["echo: q0"]
    assert waits == [7.0, 7.0]  # backoff alone would wait 0.01, then 0.02


def test_backoff_doubles_with_jitter_and_is_capped(monkeypatch):
    waits = []
    monkeypatch.setattr(openai_client.time, "sleep", waits.append)
    with ChatServer(echo, fail_first=5) as server:
        spec = ServerSpec(base_url=server.url, model="tiny", backoff=1.0, max_backoff=5.0)
        out = ChatClient(spec).generate(convs(1))
    assert out == ["echo: q0"]
    for wait, base in zip(waits[:3], (1.0, 2.0, 4.0), strict=True):
        assert 0.75 * base <= wait <= 1.25 * base
    assert waits[3:] == [5.0, 5.0]


def test_a_timeout_is_retried_then_fails_that_item():
    with ChatServer(echo, hold_after=0) as server:
        out = client(server.url, concurrency=1, retries=1, timeout=0.2).generate(convs(1))
    assert isinstance(out[0], Failed) and out[0].reason == "timeout"
    assert server.requests == 2


def test_a_client_error_is_not_retried_and_fails_that_item_only():
    with ChatServer(echo, fail_first=1, fail_status=400) as server:
        out = client(server.url, concurrency=1).generate(convs(3))
    assert isinstance(out[0], Failed) and out[0].reason == "http-400"
    assert out[1:] == ["echo: q1", "echo: q2"]
    assert server.requests == 3


def test_retries_run_out_into_a_failed_item():
    with ChatServer(echo, fail_first=3) as server:
        out = client(server.url, concurrency=1, retries=2).generate(convs(2))
    assert out[0] == Failed("http-503", '{"error": {"message": "warming up"}}')
    assert out[1] == "echo: q1"


def test_a_server_that_is_down_stops_the_run_with_one_line():
    with ChatServer(echo) as server:
        url = server.url
    c = client(url, concurrency=2, retries=1)  # nothing listens there any more
    # It stops at the 8th failure in a row; the other request in flight may fail first
    # (9): a race of two threads, which a loaded machine loses now and then.
    with pytest.raises(VecapError, match=r"failed [89] requests in a row \(connection"):
        c.generate(convs(20))


def test_the_key_comes_from_the_named_environment_variable(monkeypatch):
    monkeypatch.setenv("MY_KEY", "sk-test")
    with ChatServer(echo) as server:
        client(server.url, api_key_env="MY_KEY").generate(convs(1))
        client(server.url, api_key_env="UNSET_KEY_VAR").generate(convs(1))
    assert server.headers[0]["Authorization"] == "Bearer sk-test"
    assert "Authorization" not in server.headers[1]


def test_a_bad_base_url_is_one_line():
    with pytest.raises(VecapError, match="--api-base 'localhost:8000' is not an http"):
        client("localhost:8000")
