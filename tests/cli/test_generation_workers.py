"""`--workers` on caption and rewrite: the same bytes as one process (outputs, JSONL
and tar, --rejects, --stats but `seconds`, the cache's hit/miss counts), a failed
request rejected alike, a rerun all cache hits, --resume after kill -9; a model
that would load once per worker on one GPU is refused in one line.

A worker's batch is two model batches here (`--batch-size 3`: 6 records), so a
pool of ~100 records gives every worker many of them."""

import hashlib
import os
import random
import signal
import time

import orjson
import pytest

from tests.cli.test_workers import outputs_of, start
from tests.conftest import run_vecap, tiny_image
from tests.hostile.test_resume import outputs, progress_shards, stalling_input, stats_of
from tests.openai_server import ChatServer, digest_answer, image_of
from tests.tiny_models import ONE_THREAD, tiny_model
from vecap_cli.generate.base import on_gpu
from vecap_cli.generate.registry import CAPTION, REWRITE, get
from vecap_cli.steps import generation  # noqa: F401 -- registers rules

WORDS = ["dog", "cat", "red", "sky", "photo", "Paris", "hot", "grass", "the", "Nikon"]
SERVED = ["--backend", "openai", "--model", "m", "--concurrency", "2", "--batch-size", "3"]


def _content(messages: list[dict]) -> bytes:
    image = image_of(messages)
    return image if image is not None else orjson.dumps(messages)


def fails(messages: list[dict]) -> bool:
    """About one request in eight fails, the same one every time (HTTP 400: not retried)."""
    return hashlib.sha1(_content(messages)).hexdigest()[0] in "01"


def answer(messages: list[dict]) -> str:
    """digest_answer; about one in ten holds a link (caption rejects it, rewrite falls back)."""
    if hashlib.sha1(_content(messages)).hexdigest()[1] in "f":
        return "a photo, see https://example.com/more"
    return digest_answer(messages)


@pytest.fixture(scope="module")
def server():
    with ChatServer(answer, fail_if=fails, fail_status=400) as served:
        yield served


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    """~120 records: images (a few missing or broken), alt and vec on most, some
    with a vec already, a few lines that are not JSON."""
    folder = tmp_path_factory.mktemp("pool")
    rng = random.Random(16)
    lines = []
    for i in range(120):
        if i % 29 == 7:
            lines.append(b"{not json")
            continue
        path = folder / f"{i}.png"
        if i % 31 != 11:  # else: missing
            path.write_bytes(tiny_image(rng) if i % 37 != 13 else b"not an image")
        record = {"key": f"k{i:03d}", "image": str(path), "alt": " ".join(rng.choices(WORDS, k=4))}
        if i % 5:
            record["vec"] = "a " + " ".join(rng.choices(WORDS, k=3))
        lines.append(orjson.dumps(record))
    (folder / "pool.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    return folder


def same_with_workers(tmp_path, args, output="out.jsonl", cache=False) -> dict:
    """`args` with 1, 2 and 3 workers (and --stats, --rejects; with `cache`, a cache
    of each run's own): all three write the same files. Returns them."""
    runs = []
    for workers in (1, 2, 3):
        folder = tmp_path / f"w{workers}"
        extra = ["--cache", tmp_path / f"cache{workers}"] if cache else []
        result = run_vecap(
            *args, *extra, "-o", folder / output, "--stats", folder / "stats.json",
            "--rejects", folder / "rejects.jsonl", "--workers", workers, "-q",
        )  # fmt: skip
        assert result.code == 0, result.err
        runs.append(outputs_of(folder))
    assert runs[1] == runs[0]
    assert runs[2] == runs[0]
    return runs[0]


def caption_args(pool, server) -> list:
    return ["caption", pool / "pool.jsonl", *SERVED, "--api-base", server.url, "--overwrite"]


def test_caption_jsonl_and_tar_with_failed_requests(pool, server, tmp_path):
    shards = same_with_workers(
        tmp_path / "tar", [*caption_args(pool, server), "--shard-size", "20"], output="%03d.tar",
        cache=True,
    )  # fmt: skip
    assert len([name for name in shards if name.endswith(".tar")]) >= 4
    stats = dict(shards["stats.json"])
    assert stats["rejected"]["caption-http-400"] >= 5
    assert stats["rejected"]["caption-url"] >= 3
    assert {"image-missing", "bad-image", "bad-json"} <= set(stats["rejected"])
    assert stats["caption"]["captioned"] >= 60 and stats["balanced"]
    # tar in (the shards just written), tar out: images read from the members
    tars = sorted(str(tmp_path / "tar" / "w1" / n) for n in shards if n.endswith(".tar"))
    again = [
        "caption",
        *tars,
        *SERVED,
        "--api-base",
        server.url,
        "--overwrite",
        "--shard-size",
        "30",
    ]
    same_with_workers(tmp_path / "tar2", again, output="%03d.tar")


def test_a_second_run_takes_every_answer_from_the_cache(pool, server, tmp_path):
    files = same_with_workers(tmp_path, caption_args(pool, server), cache=True)
    first = dict(files["stats.json"])
    failed = first["rejected"]["caption-http-400"]
    assert first["cache"]["miss"] > 50 and "hit" not in first["cache"]

    before = server.requests
    rerun = tmp_path / "rerun"
    result = run_vecap(
        *caption_args(pool, server), "--cache", tmp_path / "cache1", "--workers", "2", "-q",
        "-o", rerun / "out.jsonl", "--stats", rerun / "stats.json", "--rejects", rerun / "rejects.jsonl",
    )  # fmt: skip
    assert result.code == 0, result.err
    assert server.requests - before == failed  # a failed request is not kept: asked again
    again = outputs_of(rerun)
    assert again["out.jsonl"] == files["out.jsonl"]
    assert again["rejects.jsonl"] == files["rejects.jsonl"]
    stats = dict(again["stats.json"])
    assert stats["cache"] == {"hit": first["cache"]["miss"] - failed, "miss": failed}


@pytest.mark.parametrize("backend", ["openai", "rules"])
def test_rewrite(pool, server, tmp_path, backend):
    if backend == "openai":
        args = ["rewrite", pool / "pool.jsonl", *SERVED, "--api-base", server.url]
    else:
        args = ["rewrite", pool / "pool.jsonl", "--backend", "rules"]
    files = same_with_workers(tmp_path, args, output="%03d.jsonl", cache=backend == "openai")
    counts = dict(files["stats.json"])["rewrite"]
    if backend == "openai":
        assert counts["fallback-http-400"] >= 3 and counts["fallback-url"] >= 2
        assert dict(files["stats.json"])["cache"]["miss"] >= 50


@pytest.mark.slow  # transformers loads in each process
def test_a_cpu_model_is_built_in_each_worker(pool, tmp_path):
    """hf on the CPU: every worker loads its own copy (one input a batch: the same
    answers however the records are shared out)."""
    lines = (pool / "pool.jsonl").read_bytes().splitlines(keepends=True)
    (tmp_path / "few.jsonl").write_bytes(b"".join(lines[:12]))
    args = ["rewrite", tmp_path / "few.jsonl", "--model", tiny_model("llama"), "--device", "cpu",
            "--max-new-tokens", "4", "--min-words", "1", "--batch-size", "1", "--overwrite"]  # fmt: skip
    runs = []
    for workers in (1, 2):
        result = run_vecap(*args, "--workers", workers, "-q", env=ONE_THREAD)
        assert result.code == 0, result.err
        runs.append(result.out)
    assert runs[0] == runs[1] and runs[0].count(b"\n") == 11  # and one line not JSON


@pytest.mark.timeout(180)
@pytest.mark.parametrize("command", ["caption", "rewrite"])
def test_kill_9_then_resume_with_workers_equals_one_uninterrupted_run(pool, tmp_path, command):
    """The input stalls after its first MiB (where --workers cuts a pipe), the workers
    done with it: shards are sealed and one is open when the run (all its processes)
    is killed."""
    padded = tmp_path / "padded"
    padded.mkdir()
    lines = (pool / "pool.jsonl").read_bytes().splitlines()
    pad = b',"pad":"' + b"x" * 10_000 + b'"}'
    (padded / "pool.jsonl").write_bytes(
        b"".join(line[:-1] + pad + b"\n" if line.endswith(b"}") else line + b"\n" for line in lines)
    )
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    whole.mkdir()
    cut.mkdir()
    (whole / "go").touch()
    with ChatServer(answer, fail_if=fails, fail_status=400) as served:
        args = [
            command, stalling_input(padded, 1), *SERVED, "--api-base", served.url, "--overwrite",
            "-o", "out/%04d.jsonl", "--shard-size", "10",
            "--stats", "stats.json", "--rejects", "rejects.jsonl",
        ]  # fmt: skip
        first = run_vecap(*args, cwd=whole)
        assert first.code == 0, first.err

        proc = start([*args, "--workers", "2"], cut)
        deadline = time.monotonic() + 60
        while progress_shards(cut) < 2 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.02)
        time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        sealed = progress_shards(cut)
        assert 2 <= sealed < len(outputs(whole)), sealed

        (cut / "go").touch()
        resumed = run_vecap(*args, "--resume", "--workers", "3", cwd=cut)
    assert resumed.code == 0, resumed.err
    assert outputs(cut) == outputs(whole)
    assert (cut / "rejects.jsonl").read_bytes() == (whole / "rejects.jsonl").read_bytes()
    assert stats_of(cut) == stats_of(whole)


def test_a_model_on_one_gpu_is_refused_with_workers_and_allowed_on_the_cpu():
    hf, coca = get(CAPTION, "hf"), get(CAPTION, "openclip")
    for backend in (hf, coca, get(REWRITE, "hf")):
        refusal = backend.workers_refusal(2, lambda: True)
        assert "--workers 2" in refusal and "--gpus-per-task 1" in refusal
        assert backend.workers_refusal(1, lambda: True) is None
        assert backend.workers_refusal(4, lambda: False) is None  # the CPU: a copy each

    def never() -> bool:
        raise AssertionError("a server's backend needs no device")

    for backend in (get(CAPTION, "openai"), get(REWRITE, "openai"), get(REWRITE, "rules")):
        assert backend.workers_refusal(8, never) is None
    assert on_gpu("cuda") and on_gpu("cuda:1") and not on_gpu("cpu")


def test_the_refusal_is_one_line_before_any_record_is_read(pool, tmp_path):
    result = run_vecap(
        "caption", pool / "pool.jsonl", "--model", tmp_path / "nope", "--device", "cuda:0",
        "--workers", "2",
    )  # fmt: skip
    assert result.code == 1, result.err
    line = result.err.strip()
    assert "\n" not in line and line.startswith("vecap caption: error: --workers 2: --backend hf")
    assert "vecap launch --tasks N --gpus-per-task 1 -- caption" in line
