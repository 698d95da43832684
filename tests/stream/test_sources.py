"""Whole small files (counts, metadata): plain or gzip, one clear line when unreadable."""

import gzip

import pytest

from vecap_cli.errors import VecapError
from vecap_cli.stream.sources import read_small_file


def test_plain_and_gzip_read_the_same(tmp_path):
    (tmp_path / "a.json").write_bytes(b'["dog"]')
    (tmp_path / "a.json.gz").write_bytes(gzip.compress(b'["dog"]'))
    assert read_small_file(str(tmp_path / "a.json")) == b'["dog"]'
    assert read_small_file(str(tmp_path / "a.json.gz")) == b'["dog"]'


@pytest.mark.parametrize(
    ("name", "data", "says"),
    [
        ("missing.json", None, "No such file"),
        ("cut.json.gz", b"\x1f\x8b\x08\x00xx", "damaged gzip"),
        ("bad.json.gz", gzip.compress(b"x" * 64)[:12] + b"\xff" * 20, "damaged gzip"),
    ],
)
def test_an_unreadable_file_is_one_line_naming_it(tmp_path, name, data, says):
    path = tmp_path / name
    if data is not None:
        path.write_bytes(data)
    with pytest.raises(VecapError) as err:
        read_small_file(str(path), "metadata ")
    message = str(err.value)
    assert message.startswith(f"cannot read metadata '{path}'") and says in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        ("https://u:pw@host/x.tar?X-Amz-Signature=SECRET", "https://***@host/x.tar?***"),
        ("pipe:curl -s http://u:pw@host/x.tar", "pipe:curl -s http://***@host/x.tar"),
        ("http://[::1", "http://[::1"),
        ("data/me@home/x.tar", "data/me@home/x.tar"),  # no URL: a local name as it is
    ],
)
def test_redact_hides_credentials_and_queries_of_urls_only(name, shown):
    from vecap_cli.stream.sources import redact

    assert redact(name) == shown


@pytest.mark.timeout(30)
def test_a_slow_producer_s_first_record_arrives_before_it_ends():
    """A pipe delivers what has arrived: no waiting for 64 KiB or the producer's end."""
    import time

    from vecap_cli.stream.sources import open_source

    spec = """pipe:sh -c 'echo "{\\"key\\": \\"a\\"}"; sleep 5; echo "{\\"key\\": \\"b\\"}"'"""
    start = time.monotonic()
    with open_source(spec) as (source, stream):
        first = stream.readline()
        waited = time.monotonic() - start
        assert first.strip() == b'{"key": "a"}'
        assert waited < 4, f"the first record took {waited:.1f} s"
        assert stream.readline().strip() == b'{"key": "b"}'
    assert source.carrier == "jsonl"
