"""Data from a tar stays data: names never leave --images-dir, never overwrite
each other, never make vecap read the user's files; a URL never reaches a shell."""

import functools
import http.server
import io
import random
import tarfile
import threading

import orjson
import pytest

from tests.cli.test_contract import CASES
from tests.conftest import run_vecap, tiny_image, write_jsonl
from vecap_cli.stream.images import ImageRejected
from vecap_cli.stream.sample import Sample, Source


def write_tar(path, members: list[tuple[str, bytes]]):
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def sample_members(name: str, image: bytes, **record) -> list[tuple[str, bytes]]:
    record = {"alt": f"a photo of {name}", "vecap": "a red cube", **record}
    return [(f"{name}.json", orjson.dumps(record)), (f"{name}.png", image)]


def records(path) -> list[dict]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def reasons_by_key(path) -> dict[str, str]:
    """key -> reason; a sample the reader refused has only its origin (FILE:KEY)."""
    return {
        r["record"]["key"] if "record" in r else r["origin"].rsplit(":", 1)[-1]: r["reason"]
        for r in records(path)
    }


def no_traceback(result):
    assert "Traceback" not in result.err, result.err


# -- (a) tar -> JSONL with --images-dir ----------------------------------------


@pytest.fixture
def escaping_tar(tmp_path):
    """Two good samples, six whose names leave the images dir, and a duplicate key."""
    rng = random.Random(5)
    outside = tmp_path / "outside"
    outside.mkdir()
    img = tmp_path / "imgs"
    img.mkdir()
    (img / "link").symlink_to(outside, target_is_directory=True)
    good = [tiny_image(rng) for _ in range(4)]
    members = [
        *sample_members("good0", good[0]),
        *sample_members("../escape", good[1]),  # a member name with '..'
        *sample_members(f"{outside}/abs", good[1]),  # an absolute member name
        *sample_members("k3", good[1], key="../keyescape"),  # the JSON key leaves
        *sample_members("k4", good[1], key="..\\..\\backslash"),
        *sample_members("k5", good[1], key="nul\u0000byte"),
        *sample_members("link/x", good[1]),  # through a link inside the images dir
        *sample_members("dup", good[2]),
        *sample_members("good1", good[3]),
        *sample_members("dup", good[1]),  # the same key, another image
    ]
    return write_tar(tmp_path / "in.tar", members), good


def expected_rejects(tmp_path) -> dict[str, str]:
    escapes = ["../escape", f"{tmp_path}/outside/abs", "../keyescape", "..\\..\\backslash"]
    escapes += ["nul\u0000byte", "link/x"]
    return {**dict.fromkeys(escapes, "bad-key"), "dup": "duplicate-key"}


# The writer (the sink) rejects escaping names for every command. Two commands never
# hand this tar's records to it, so they cannot show it: filter select rejects them
# first (no-score: the records carry no filter.clip_score), and filter dedup drops
# the escapes, which share one image, as duplicates (duplicate-exact).
_WRITING = [command for command in CASES if command not in ("filter select", "filter dedup")]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("command", _WRITING)
def test_tar_names_never_leave_or_overwrite_the_images_dir(command, tmp_path, escaping_tar):
    tar, good = escaping_tar
    out, rejects, stats = tmp_path / "out.jsonl", tmp_path / "rejects.jsonl", tmp_path / "s.json"
    args = [*command.split(), *CASES[command], tar, "-o", out, "--images-dir", tmp_path / "imgs"]
    result = run_vecap(*args, "--rejects", rejects, "--stats", stats, cwd=tmp_path)
    assert result.code == 0, result.err
    no_traceback(result)
    expected = expected_rejects(tmp_path)
    assert reasons_by_key(rejects) == expected
    assert [r["key"] for r in records(out)] == ["good0", "dup", "good1"]
    assert orjson.loads(stats.read_bytes())["balanced"]
    # nothing outside the images dir, and the first `dup` kept its own image
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "imgs", "in.tar", "out.jsonl", "outside", "rejects.jsonl", "s.json"
    ]  # fmt: skip
    assert list((tmp_path / "outside").iterdir()) == []
    assert (tmp_path / "imgs" / "dup.png").read_bytes() == good[2]
    for record in records(out):
        assert (out.parent / record["image"]).resolve().parent == (tmp_path / "imgs").resolve()

    # The same run again into the same folder writes the same files: no duplicates.
    again = run_vecap(*args, "-q", "--rejects", rejects, cwd=tmp_path)
    assert again.code == 0, again.err
    assert reasons_by_key(rejects) == expected


# -- (b) fields of a tar record are data, never local paths ------------------------


@pytest.fixture
def stealing_tar(tmp_path):
    """A tar whose record names a local image and a local file in `image` and `members`."""
    rng = random.Random(6)
    secret = tiny_image(rng)
    (tmp_path / "secret.png").write_bytes(secret)
    (tmp_path / "secret.txt").write_bytes(b"SECRET-TOKEN")
    steal = {
        "key": "steal",
        "alt": "a photo",
        "vecap": "a cube",
        "image": str(tmp_path / "secret.png"),
        "members": {"npy": str(tmp_path / "secret.txt"), "png": "secret.png"},
    }
    members = [*sample_members("good0", tiny_image(rng)), ("steal.json", orjson.dumps(steal))]
    return write_tar(tmp_path / "in.tar", members), secret, steal


@pytest.mark.timeout(60)
@pytest.mark.parametrize("command", CASES)
def test_tar_output_never_packs_files_a_tar_record_names(command, tmp_path, stealing_tar):
    tar, secret, _ = stealing_tar
    result = run_vecap(*command.split(), *CASES[command], tar, "-q", "-o", tmp_path / "out.tar")
    assert result.code == 0, result.err
    with tarfile.open(tmp_path / "out.tar") as out:
        names = out.getnames()
        blobs = [out.extractfile(name).read() for name in names]
    assert not any(secret in blob or b"SECRET-TOKEN" in blob for blob in blobs)
    assert {n for n in names if n.startswith("steal.")} <= {"steal.json", "steal.txt"}
    assert "steal.json" not in names  # rejected where it is read: path-from-tar


@pytest.mark.timeout(60)
def test_caption_never_reads_the_image_a_tar_record_names(tmp_path, stealing_tar):
    tar, _, _ = stealing_tar
    rejects = tmp_path / "rejects.jsonl"
    result = run_vecap(
        "caption", *CASES["caption"], tar, "-o", tmp_path / "out.tar", "--rejects", rejects
    )
    assert result.code == 0, result.err
    assert reasons_by_key(rejects) == {"steal": "path-from-tar"}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("command", CASES)
def test_two_steps_through_jsonl_never_launder_a_tar_records_paths(command, tmp_path, stealing_tar):
    """tar -> JSONL would turn the record's `image` into a path the next step reads."""
    tar, secret, _ = stealing_tar
    rejects = tmp_path / "rejects.jsonl"
    first = run_vecap(
        *command.split(), *CASES[command], tar, "-o", tmp_path / "mid.jsonl",
        "--images-dir", tmp_path / "imgs", "--rejects", rejects,
    )  # fmt: skip
    assert first.code == 0, first.err
    assert reasons_by_key(rejects)["steal"] == "path-from-tar"
    second = run_vecap("mix", "--policy", "first", tmp_path / "mid.jsonl", "-o", tmp_path / "o.tar")
    assert second.code == 0, second.err
    with tarfile.open(tmp_path / "o.tar") as out:
        blobs = [out.extractfile(m).read() for m in out.getmembers()]
    assert not any(secret in blob or b"SECRET-TOKEN" in blob for blob in blobs)


def test_a_tar_sample_has_no_local_image():
    record = {"key": "k", "image": "/etc/hostname"}
    sample = Sample(record, {}, 0, Source("x.tar", "tar", ""), "k")
    assert not sample.has_image() and sample.image_ext() is None
    with pytest.raises(ImageRejected, match="not a local path"):
        sample.image_bytes()


def test_jsonl_image_paths_still_resolve_beside_the_jsonl(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.png").write_bytes(tiny_image(random.Random(0)))
    pool = write_jsonl(tmp_path / "d" / "pool.jsonl", [{"key": "a", "alt": "x", "image": "a.png"}])
    result = run_vecap("mix", *CASES["mix"], pool, "-q", "-o", tmp_path / "out.tar")
    assert result.code == 0, result.err
    with tarfile.open(tmp_path / "out.tar") as out:
        assert "a.png" in out.getnames()


# -- (c) URL inputs: fetched in-process, never through a shell ----------------------


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def http_dir(tmp_path):
    """A local HTTP server on 127.0.0.1 serving tmp_path/www; yields (dir, base URL)."""
    www = tmp_path / "www"
    www.mkdir()
    handler = functools.partial(_Quiet, directory=str(www))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield www, f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.timeout(60)
def test_a_quote_in_a_url_never_runs_a_command(tmp_path, http_dir):
    www, host = http_dir
    write_tar(www / "pool.tar", sample_members("a", tiny_image(random.Random(1))))
    url = f"http://{host}/pool.tar?x=';touch PWNED;echo '"
    result = run_vecap("mix", *CASES["mix"], url, "-q", cwd=tmp_path)
    assert not (tmp_path / "PWNED").exists()
    assert result.code == 0, result.err
    assert result.out[257:262] == b"ustar"  # the tar came through


@pytest.mark.timeout(60)
def test_http_input_reads_jsonl_and_errors_are_one_line_without_credentials(tmp_path, http_dir):
    www, host = http_dir
    write_jsonl(www / "pool.jsonl", [{"key": "a", "alt": "x"}, {"key": "b", "alt": "y"}])
    ok = run_vecap("mix", *CASES["mix"], f"http://{host}/pool.jsonl", "-q")
    assert ok.code == 0, ok.err
    assert [r["key"] for r in ok.records()] == ["a", "b"]

    missing = run_vecap("mix", f"http://user:hunter2@{host}/nowhere.jsonl")
    assert missing.code == 1
    assert missing.err.strip().splitlines() == [
        f"vecap mix: error: cannot read 'http://***@{host}/nowhere.jsonl': HTTP 404 File not found"
    ]
    refused = run_vecap("mix", "http://user:hunter2@127.0.0.1:9/x.jsonl")
    assert refused.code == 1 and len(refused.err.strip().splitlines()) == 1, refused.err
    assert "hunter2" not in refused.err and "127.0.0.1:9" in refused.err
