"""`--workers` as users run it: the same bytes as one process for every mix policy
and curate pass, --resume after kill -9, and a dead worker or Ctrl-C ends the
run at once (exit 1 with one line, or 130), leaving no process behind.

Batches are ~1 MiB of JSONL, so the pools here carry padding: a few MiB, a few
batches for the workers to share."""

import os
import signal
import subprocess
import sys
import time

import orjson
import pytest

from tests.conftest import REPO, run_vecap
from tests.hostile.test_resume import SHARD, make_pool, outputs, progress_shards, stats_of

WORDS = ["dog", "cat", "red", "<b>sky</b>", "photo", "Paris", "hot", "grass", "the"]


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    """~3,000 records of ~1 kB (3 batches), images, bad lines and records without text."""
    return make_pool(tmp_path_factory.mktemp("pool"), 3000)


def outputs_of(folder) -> dict:
    files = {}
    for name in sorted(os.listdir(folder)):
        data = (folder / name).read_bytes()
        if name.startswith("stats"):
            stats = orjson.loads(data)
            del stats["seconds"]
            data = list(stats.items())  # keys in their order
        files[name] = data
    return files


def same_with_workers(pool, tmp_path, args, output="out.jsonl") -> dict:
    """Runs `args` with 1, 2 and 3 workers (and --stats, --rejects); all three must
    write the same files. Returns them."""
    runs = []
    for workers in (1, 2, 3):
        folder = tmp_path / f"w{workers}"
        result = run_vecap(
            *args, "-o", folder / output, "--stats", folder / "stats.json",
            "--rejects", folder / "rejects.jsonl", "--workers", workers, "-q",
        )  # fmt: skip
        assert result.code == 0, result.err
        runs.append(outputs_of(folder))
    assert runs[1] == runs[0]
    assert runs[2] == runs[0]
    return runs[0]


@pytest.mark.parametrize("policy", ["random", "all", "concat", "first"])
def test_mix_policies(pool, tmp_path, policy):
    files = same_with_workers(pool, tmp_path, ["mix", pool / "pool.jsonl", "--policy", policy])
    assert files["rejects.jsonl"].count(b"\n") >= 100


def test_mix_into_tar_shards_packs_the_same_images(pool, tmp_path):
    files = same_with_workers(
        pool, tmp_path, ["mix", pool / "pool.jsonl", "--shard-size", "500"], output="%03d.tar"
    )
    assert len([name for name in files if name.endswith(".tar")]) >= 5


def test_curate_passes(pool, tmp_path):
    meta = ["--metadata", pool / "meta.json", "--t", "80", "--html"]
    same_with_workers(pool, tmp_path / "run", ["curate", pool / "pool.jsonl", *meta])
    counts = same_with_workers(
        pool, tmp_path / "count", ["curate", "count", pool / "pool.jsonl", *meta[:2], "--html"],
        output="counts.json",
    )  # fmt: skip
    assert orjson.loads(counts["counts.json"])["records"] > 2000
    same_with_workers(
        pool, tmp_path / "balance",
        ["curate", "balance", pool / "pool.jsonl", *meta, "--counts", tmp_path / "count" / "w1" / "counts.json"],
        output="%03d.jsonl",
    )  # fmt: skip


def test_workers_flag_takes_a_count_or_auto(pool):
    assert (
        run_vecap("mix", pool / "pool.jsonl", "--workers", "auto", "-q", "-o", "/dev/null").code
        == 0
    )
    bad = run_vecap("mix", pool / "pool.jsonl", "--workers", "0")
    assert bad.code == 2 and "expected a count of 1 or more, or auto; got '0'" in bad.err


def start(args, cwd, stdin=None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "vecap_cli", *map(str, args)],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdin=stdin,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its process group: vecap, its workers, the input's shell
        # as from a terminal: a test run started in the background (`make test &`)
        # inherits SIGINT ignored, and so would vecap, which would then run on
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(child) for child in f.read().split()]
    except FileNotFoundError:
        return []


def workers_of(proc: subprocess.Popen, n: int) -> list[int]:
    """The run's worker processes (python children, not the input's shell), once n are up."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = [c for c in children(proc.pid) if b"python" in _cmdline(c)]
        if len(found) == n:
            return found
        time.sleep(0.05)
    raise AssertionError("the workers did not start")


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except FileNotFoundError:
        return b""


def gone(pids: list[int]) -> bool:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if not any(os.path.exists(f"/proc/{pid}") and _alive(pid) for pid in pids):
            return True
        time.sleep(0.05)
    return False


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"  # a zombie is gone but for its parent
    except FileNotFoundError:
        return False


@pytest.mark.timeout(180)
@pytest.mark.parametrize("command", ["mix", "curate", "curate balance"])
def test_kill_9_then_resume_with_workers_equals_one_uninterrupted_run(pool, tmp_path, command):
    """The input stalls after its records, while the parent waits for the last batch:
    shards are sealed and one is open when the run is killed (all its processes)."""
    from tests.hostile.test_resume import command_args, stalling_input

    if command == "curate balance":
        counted = run_vecap("curate", "count", pool / "pool.jsonl", "--metadata",
                            pool / "meta.json", "-o", pool / "counts.json", "-q")  # fmt: skip
        assert counted.code == 0, counted.err
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    whole.mkdir()
    cut.mkdir()
    (whole / "go").touch()
    words, flags, stall_on = command_args(command, pool, "")
    args = [
        *words, stalling_input(pool, stall_on), *flags,
        "-o", "out/%04d.jsonl", "--shard-size", str(SHARD),
        "--stats", "stats.json", "--rejects", "rejects.jsonl",
    ]  # fmt: skip
    first = run_vecap(*args, cwd=whole)
    assert first.code == 0, first.err

    resume = ["--resume"]
    proc = start([*args, "--workers", "2", *(resume if command == "curate" else [])], cut)
    deadline = time.monotonic() + 60
    while progress_shards(cut) < 2 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    sealed = progress_shards(cut)
    assert 2 <= sealed < len(outputs(whole)), sealed

    (cut / "go").touch()
    resumed = run_vecap(*args, *resume, "--workers", "2", cwd=cut)
    assert resumed.code == 0, resumed.err
    assert outputs(cut) == outputs(whole)
    assert (cut / "rejects.jsonl").read_bytes() == (whole / "rejects.jsonl").read_bytes()
    assert stats_of(cut) == stats_of(whole)


def paused_input(pool, seconds: int) -> str:
    """A pipe: input giving the first 2,000 records, then (after a pause) the rest."""
    return (
        f"pipe:head -n 2000 {pool / 'pool.jsonl'}; sleep {seconds}; "
        f"tail -n +2001 {pool / 'pool.jsonl'}"
    )


@pytest.mark.timeout(60)
def test_a_worker_killed_mid_run_ends_the_run_in_one_line(pool, tmp_path):
    proc = start(["mix", paused_input(pool, 3), "--workers", "2", "-o", "o.jsonl"], tmp_path)
    workers = workers_of(proc, 2)
    os.kill(workers[1], signal.SIGKILL)
    _, err = proc.communicate(timeout=30)
    err = err.decode()
    assert proc.returncode == 1, err
    assert (
        err.strip()
        == "vecap mix: error: a worker process died (killed by SIGKILL: out of memory?); the run stops here"
    )
    assert gone(workers)
    assert not (tmp_path / "o.jsonl").exists() and not (tmp_path / "o.jsonl.tmp").exists()


@pytest.mark.timeout(60)
def test_ctrl_c_ends_the_run_and_its_workers_with_130(pool, tmp_path):
    proc = start(["mix", "-", "--workers", "2", "-o", "o.jsonl"], tmp_path, stdin=subprocess.PIPE)
    proc.stdin.write(b"".join((pool / "pool.jsonl").read_bytes().splitlines(True)[:2000]))
    proc.stdin.flush()  # and the input stays open: the run waits for more
    workers = workers_of(proc, 2)
    os.killpg(proc.pid, signal.SIGINT)  # as a terminal does: to the whole group
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err.decode()
    assert "Traceback" not in err.decode()
    assert gone(workers)


@pytest.mark.parametrize(
    "command", [["mix"], ["curate", "--metadata", REPO / "tests" / "data" / "curate-metadata.json"]]
)
def test_empty_input_and_stdin_with_workers(pool, command):
    assert run_vecap(*command, "--workers", "2", "-q", stdin=b"").out == b""
    lines = (pool / "pool.jsonl").read_bytes()
    from_stdin = run_vecap(*command, "--workers", "2", "-q", stdin=lines)
    alone = run_vecap(*command, pool / "pool.jsonl", "-q")
    assert from_stdin.code == alone.code == 0, from_stdin.err
    assert from_stdin.out == alone.out and len(alone.out) > 1000
