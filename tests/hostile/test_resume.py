"""kill -9, then --resume: the shards, the rejects and every counter of --stats
(the command's own too) equal an uninterrupted run's. A run is killed while its
input, a pipe, waits after the last record, so that shards are sealed and one is
still open; rejected records sit in finished shards and in the open one."""

import os
import random
import signal
import subprocess
import sys
import time

import orjson
import pytest

from tests.conftest import REPO, run_vecap, tiny_image
from tests.openai_server import ChatServer, digest_answer

SHARD = 40


def make_pool(tmp_path, n: int):
    """`n` JSONL lines: images, alt/vec/vecap on most, some without text, some no JSON."""
    rng = random.Random(11)
    (tmp_path / "img").mkdir(exist_ok=True)
    words = ["dog", "cat", "red", "<b>sky</b>", "photo", "Paris", "hot", "grass", "the"]
    lines = []
    for i in range(n):
        if i % 23 == 5:
            lines.append(b"{not json")
            continue
        (tmp_path / "img" / f"{i}.png").write_bytes(tiny_image(rng))
        record = {"key": f"k{i:04d}", "image": str(tmp_path / "img" / f"{i}.png")}
        record["pad"] = "x" * 1000  # a pipe is read 64 KiB at a time: the stall comes late
        if i % 17 != 3:  # else: nothing to caption with, no text to match
            record["alt"] = " ".join(rng.choices(words, k=rng.randint(1, 5)))
        if rng.random() < 0.8:
            record["vec"] = "a " + " ".join(rng.choices(words, k=3))
        if rng.random() < 0.5:
            record["vecap"] = "fused " + " ".join(rng.choices(words, k=4))
        lines.append(orjson.dumps(record))
    (tmp_path / "pool.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    (tmp_path / "meta.json").write_bytes(orjson.dumps(["dog", "cat", "red", "sky", "hot dog"]))
    return tmp_path


def with_duplicates(pool) -> None:
    """Every 6th record's image made a duplicate of an earlier one: the same file
    (exact), or the same pixels re-encoded with other metadata (exact and pHash 0),
    so that `filter dedup` drops some records in every shard."""
    from PIL import Image

    lines = (pool / "pool.jsonl").read_bytes().splitlines()
    for n, line in enumerate(lines):
        if n % 6 != 1 or n < 12 or line.startswith(b"{not"):
            continue
        record = orjson.loads(line)
        source = pool / "img" / f"{n - 11}.png"
        if not source.exists():  # that line is not JSON
            continue
        if n % 12 == 1:
            record["image"] = str(source)
        else:
            copy = pool / "img" / f"{n}-copy.png"
            Image.open(source).save(copy, format="PNG", optimize=True, pnginfo=None)
            record["image"] = str(copy)
        lines[n] = orjson.dumps(record)
    (pool / "pool.jsonl").write_bytes(b"\n".join(lines) + b"\n")


@pytest.fixture
def pool(tmp_path):
    return make_pool(tmp_path, 300)


def command_args(command: str, pool, url: str) -> tuple[list, list, int]:
    """The command's words, its flags, and which execution of the input pipe stalls
    (curate under --resume reads its input twice: counting, then the record pass)."""
    if command == "embed":  # a model of its own, built only for it
        flags = ["-k", "2", "--text-keys", "alt,vecap", "--device", "cpu", "--batch-size", "16"]
        return ["embed"], [*teacher(pool), *flags], 1
    return {
        "mix": (["mix"], [], 1),
        "mix all": (["mix"], ["--policy", "all"], 1),
        "mix first": (["mix"], ["--policy", "first"], 1),
        "rewrite": (["rewrite"], ["--backend", "rules"], 1),
        "curate": (["curate"], ["--metadata", pool / "meta.json", "--t", "80", "--html"], 2),
        "curate balance": (["curate", "balance"], ["--metadata", pool / "meta.json",
                           "--counts", pool / "counts.json", "--t", "80"], 1),
        "caption": (["caption"], ["--backend", "openai", "--model", "m", "--api-base", url,
                                  "--overwrite", "--concurrency", "2"], 1),
        "caption --n": (["caption"], ["--backend", "openai", "--model", "m", "--api-base", url,
                                      "--overwrite", "--n", "2", "--temperature", "0.7"], 1),
        # dedup always reads twice: the survey, then the record pass, which stalls
        "filter dedup": (["filter", "dedup"], ["--exact", "--phash-distance", "0"], 2),
    }[command]  # fmt: skip


def teacher(pool) -> list:
    """--model/--pretrained of a tiny open_clip model written into the pool (embed's)."""
    from tests.eval.tiny import write_openclip

    (pool / "teacher").mkdir(exist_ok=True)
    config, checkpoint = write_openclip(pool / "teacher")
    return ["--model", config, "--pretrained", checkpoint]


def stalling_input(pool, stall_on: int) -> str:
    """A pipe: input that gives the pool, then (until ./go exists) waits on its
    `stall_on`-th execution, as a slow source would."""
    return (
        f"pipe:cat {pool / 'pool.jsonl'}; echo >> runs; "
        f"[ -e go ] || [ $(wc -l < runs) -lt {stall_on} ] || sleep 120"
    )


def run_in(folder, args):
    return run_vecap(*args, cwd=folder)


def progress_shards(folder) -> int:
    path = folder / "out" / ".vecap-progress-0-of-1.json"
    try:
        return orjson.loads(path.read_bytes())["shards"]
    except (FileNotFoundError, orjson.JSONDecodeError):
        return 0


def outputs(folder) -> dict:
    names = sorted(n for n in os.listdir(folder / "out") if n.endswith((".jsonl", ".tar")))
    return {n: (folder / "out" / n).read_bytes() for n in names}


def stats_of(folder) -> dict:
    stats = orjson.loads((folder / "stats.json").read_bytes())
    del stats["seconds"]
    return stats


@pytest.mark.timeout(180)
@pytest.mark.parametrize(
    "command",
    ["mix", "mix all", "mix first", "rewrite", "curate", "curate balance", "caption",
     "caption --n", "filter dedup", "embed"],
)  # fmt: skip
def test_kill_9_then_resume_equals_an_uninterrupted_run(pool, command):
    if command == "curate balance":  # it matches 1,024 records at a time: more of them
        make_pool(pool, 1500)
        counted = run_vecap("curate", "count", pool / "pool.jsonl", "--metadata",
                            pool / "meta.json", "-o", pool / "counts.json", "-q")  # fmt: skip
        assert counted.code == 0, counted.err
    if command == "filter dedup":
        with_duplicates(pool)
    whole, cut = pool / "whole", pool / "cut"
    whole.mkdir()
    cut.mkdir()
    (whole / "go").touch()
    with ChatServer(digest_answer) as server:
        words, flags, stall_on = command_args(command, pool, server.url)
        args = [
            *words, stalling_input(pool, stall_on), *flags,
            "-o", f"out/%04d.{'tar' if command == 'embed' else 'jsonl'}", "--shard-size", str(SHARD),
            "--stats", "stats.json", "--rejects", "rejects.jsonl",
        ]  # fmt: skip
        first = run_in(whole, args)
        assert first.code == 0, first.err

        # curate reads twice under --resume: the cut run takes it from the start
        resume = ["--resume"]
        proc = subprocess.Popen(
            [sys.executable, "-m", "vecap_cli", *map(str, args),
             *(resume if command == "curate" else [])],
            cwd=cut,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # its process group: vecap, the shell, the sleep
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while progress_shards(cut) < 2 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.02)
        time.sleep(0.2)  # let it run on to the stalled input
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL
        sealed = progress_shards(cut)
        assert 2 <= sealed < len(outputs(whole)), sealed
        finished = {n: os.stat(cut / "out" / n) for n in sorted(outputs(cut))[:sealed]}

        (cut / "go").touch()
        resumed = run_in(cut, [*args, *resume])
    assert resumed.code == 0, resumed.err
    assert outputs(cut) == outputs(whole)
    for name, before in finished.items():  # resumed, not redone: the sealed shards stand
        after = os.stat(cut / "out" / name)
        assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns), name
    assert (cut / "rejects.jsonl").read_bytes() == (whole / "rejects.jsonl").read_bytes()
    assert (whole / "rejects.jsonl").read_bytes().count(b"\n") >= 10
    assert stats_of(cut) == stats_of(whole)
    counts = stats_of(whole)
    added, dropped, rejected = (sum(counts[k].values()) for k in ("added", "dropped", "rejected"))
    assert counts["in"] + added == counts["out"] + dropped + rejected and counts["balanced"]
    if command == "filter dedup":  # duplicates dropped in the finished shards and the open one
        assert counts["dropped"]["duplicate-exact"] >= 40, counts
    assert not [n for n in os.listdir(cut / "out") if n.endswith(".tmp")]


def test_a_damaged_progress_file_is_one_line(pool):
    out = pool / "out"
    args = ["mix", pool / "pool.jsonl", "-o", out / "%04d.jsonl", "--shard-size", str(SHARD)]
    assert run_vecap(*args).code == 0
    progress = out / ".vecap-progress-0-of-1.json"
    for damaged in (b'{"shards": 2', b"[]", b'{"shards": "x", "tally": {}}', b""):
        progress.write_bytes(damaged)
        result = run_vecap(*args, "--resume")
        assert result.code == 1, result.err
        assert result.err.strip().count("\n") == 0 and "Traceback" not in result.err
        assert f"'{progress}' is damaged" in result.err


@pytest.mark.parametrize("damage", ["truncated", "cut mid-line", "missing"])
def test_a_damaged_rejects_file_is_one_line(pool, damage):
    out = pool / "out"
    args = [
        "mix", pool / "pool.jsonl", "-o", out / "%04d.jsonl", "--shard-size", str(SHARD),
        "--rejects", pool / "rejects.jsonl",
    ]  # fmt: skip
    assert run_vecap(*args).code == 0
    rejects = pool / "rejects.jsonl"
    data = rejects.read_bytes()
    if damage == "missing":
        rejects.unlink()
    else:
        rejects.write_bytes(data[: data.index(b"\n") + (1 if damage == "truncated" else -5)])
    result = run_vecap(*args, "--resume")
    assert result.code == 1, result.err
    assert result.err.strip().count("\n") == 0 and "Traceback" not in result.err
    assert str(rejects) in result.err
