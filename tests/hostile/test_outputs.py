"""Output integrity: one writer per output, side files that overwrite nothing, a
full disk or a closed pipe as one line and a failure status, bad -o patterns as
usage errors. Applied to every command that writes."""

import errno
import fcntl
import os
import resource
import signal
import subprocess
import sys
import time

import orjson
import pytest

from tests.conftest import REPO, run_vecap, tiny_image, write_jsonl
from tests.openai_server import ChatServer, digest_answer

NO_SPACE = os.strerror(errno.ENOSPC)
TOO_BIG = os.strerror(errno.EFBIG)


@pytest.fixture
def pool(tmp_path):
    """Records every record command takes (alt, vec, image), a line that is no JSON,
    and a curate metadata list."""
    import random

    rng = random.Random(3)
    (tmp_path / "img").mkdir()
    records = []
    for i in range(30):
        (tmp_path / "img" / f"{i}.png").write_bytes(tiny_image(rng))
        records.append(
            {"key": f"k{i:03d}", "alt": f"a red dog number {i}", "vec": "a dog on grass",
             "image": f"img/{i}.png"}
        )  # fmt: skip
    write_jsonl(tmp_path / "pool.jsonl", records)
    with open(tmp_path / "pool.jsonl", "ab") as f:
        f.write(b"{not json\n")
    (tmp_path / "meta.json").write_bytes(orjson.dumps(["dog", "red", "grass"]))
    return tmp_path


# The record commands, each as a user runs it on `pool` (caption: against a local server).
def record_args(command: str, p, url: str) -> list:
    return {
        "mix": ["mix", p / "pool.jsonl"],
        "rewrite": ["rewrite", p / "pool.jsonl", "--backend", "rules"],
        "curate": ["curate", p / "pool.jsonl", "--metadata", p / "meta.json"],
        "curate balance": ["curate", "balance", p / "pool.jsonl", "--metadata",
                           p / "meta.json", "--counts", p / "counts.json"],
        "caption": ["caption", p / "pool.jsonl", "--backend", "openai", "--model", "m",
                    "--api-base", url, "--overwrite"],
        "curate count": ["curate", "count", p / "pool.jsonl", "--metadata", p / "meta.json"],
    }[command]  # fmt: skip


RECORD = ["mix", "rewrite", "curate", "curate balance", "caption"]


def counts_for(pool):
    result = run_vecap(
        "curate", "count", pool / "pool.jsonl", "--metadata", pool / "meta.json",
        "-o", pool / "counts.json", "-q",
    )  # fmt: skip
    assert result.code == 0, result.err


def one_error_line(result, command: str, *words: str) -> None:
    assert "Traceback" not in result.err, result.err
    lines = [line for line in result.err.splitlines() if line.strip()]
    assert lines and lines[-1].startswith(f"vecap {command.split()[0]}"), result.err
    assert "error:" in lines[-1], result.err
    for word in words:
        assert word in lines[-1], result.err


def leftovers(directory) -> list[str]:
    return [
        os.path.join(root, name)
        for root, _, names in os.walk(directory)
        for name in names
        if name.endswith(".tmp") or ".tmp" in name
    ]


# -- a full disk --------------------------------------------------------------


@pytest.mark.timeout(120)
@pytest.mark.parametrize("command", RECORD)
@pytest.mark.parametrize("flag", ["-o", "--stats", "--rejects"])
def test_dev_full_as_any_output_is_one_line_and_status_1(pool, command, flag):
    if command == "curate balance":
        counts_for(pool)
    with ChatServer(digest_answer) as server:
        result = run_vecap(*record_args(command, pool, server.url), flag, "/dev/full", cwd=pool)
    assert result.code == 1, result.err
    one_error_line(result, command, NO_SPACE, "/dev/full")
    assert leftovers(pool) == []


def _limited(size: int):
    """In the child: files may not grow past `size` bytes (writes fail with EFBIG,
    as on a full disk), and SIGXFSZ does not kill it."""

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))

    return limit


def run_limited(*args, size: int, cwd):
    proc = subprocess.run(
        [sys.executable, "-m", "vecap_cli", *map(str, args)],
        capture_output=True,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1"},
        preexec_fn=_limited(size),
        timeout=120,
    )
    from tests.conftest import Result

    return Result(proc.returncode, proc.stdout, proc.stderr.decode())


@pytest.mark.timeout(120)
@pytest.mark.parametrize("command", RECORD)
@pytest.mark.parametrize("output", ["out.jsonl", "out.tar", "shards/%03d.tar"])
def test_a_disk_that_fills_up_leaves_no_tmp_and_no_partial_output(pool, command, output):
    if command == "curate balance":
        counts_for(pool)
    with ChatServer(digest_answer) as server:
        result = run_limited(
            *record_args(command, pool, server.url), "-o", output, "--shard-size", "20",
            size=2048, cwd=pool,
        )  # fmt: skip
    assert result.code == 1, result.err
    one_error_line(result, command, TOO_BIG)
    assert leftovers(pool) == []
    assert not (pool / output).exists()


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "args",
    [
        ["count", "{pool}", "--metadata", "{meta}", "-o", "/dev/full"],
        ["count", "{pool}", "--metadata", "{meta}", "-o", "c.json", "--stats", "/dev/full"],
        ["count", "{pool}", "--metadata", "{meta}", "-o", "c.json", "--rejects", "/dev/full"],
        ["count", "--merge", "{counts}", "-o", "/dev/full"],
        ["run", "{pool}", "--metadata", "{meta}", "--save-counts", "/dev/full"],
        ["metadata", "--no-wordnet", "-o", "/dev/full"],
        ["report", "{counts}", "--plot", "/dev/full"],
    ],
    ids=["count", "count-stats", "count-rejects", "merge", "save-counts", "metadata", "plot"],
)
def test_curate_outputs_on_a_full_disk_are_one_line(pool, args):
    counts_for(pool)
    names = {
        "pool": pool / "pool.jsonl",
        "meta": pool / "meta.json",
        "counts": pool / "counts.json",
    }
    result = run_vecap(
        "curate", *[a.format(**{k: str(v) for k, v in names.items()}) for a in args], cwd=pool
    )
    assert result.code == 1, result.err
    one_error_line(result, "curate", "/dev/full")
    assert leftovers(pool) == []


@pytest.mark.timeout(180)
@pytest.mark.parametrize("flag", ["-o", "--stats", "--rejects"])
def test_eval_results_on_a_full_disk_are_one_line(pool, flag):
    pytest.importorskip("open_clip")
    from tests.eval.tiny import write_openclip

    (pool / "model").mkdir()
    config, checkpoint = write_openclip(pool / "model")
    records = [orjson.loads(line) for line in (pool / "pool.jsonl").read_bytes().splitlines()[:8]]
    write_jsonl(pool / "eval.jsonl", [{**r, "cls": i % 2} for i, r in enumerate(records)])
    with open(pool / "eval.jsonl", "ab") as f:
        f.write(b"{not json\n")  # a rejection
    (pool / "names.txt").write_text("cat\ndog\n")
    result = run_vecap(
        "eval", "--task", "zeroshot", "--model", config, "--pretrained", checkpoint,
        pool / "eval.jsonl", "--classnames", pool / "names.txt", "--templates", "simple",
        flag, "/dev/full", env={"OMP_NUM_THREADS": "1"}, cwd=pool,
    )  # fmt: skip
    assert result.code == 1, result.err
    one_error_line(result, "eval", NO_SPACE)
    assert leftovers(pool) == []


# -- a reader that leaves -----------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("command", ["metadata", "curate", "mix"])
def test_a_reader_that_leaves_mid_way_fails_the_run_quietly(pool, command):
    """Megabytes to stdout, read 10 bytes of: a short write, then EPIPE: status 1."""
    (pool / "titles.txt").write_text("".join(f"title number {i}\n" for i in range(200_000)))
    big = write_jsonl(
        pool / "big.jsonl", [{"key": str(i), "alt": "dog " * 20} for i in range(40_000)]
    )
    args = {
        "metadata": ["curate", "metadata", "--no-wordnet", "--titles", pool / "titles.txt"],
        "curate": ["curate", big, "--metadata", pool / "meta.json"],
        "mix": ["mix", big],
    }[command]
    proc = subprocess.Popen(
        [sys.executable, "-m", "vecap_cli", *map(str, args), "-o", "-"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert len(proc.stdout.read(10)) == 10
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 1, err
    assert "Traceback" not in err, err


# -- one writer per output ----------------------------------------------------


@pytest.fixture
def stalled_caption(pool):
    """A caption run that has written its first shard and waits on its server."""
    procs = []

    def start(output, *extra):
        server = ChatServer(digest_answer, hold_after=6).__enter__()
        proc = subprocess.Popen(
            [sys.executable, "-m", "vecap_cli",
             *map(str, record_args("caption", pool, server.url)), "--shard-size", "5",
             "--batch-size", "1", "--concurrency", "1", "-o", str(output), *extra],
            env={**os.environ, "PYTHONPATH": str(REPO)},
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        procs.append((proc, server))
        deadline = time.monotonic() + 60
        while server.requests <= 6 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.requests > 6
        return proc

    yield start
    for proc, server in procs:
        proc.kill()
        proc.wait()
        server.__exit__(None, None, None)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("command", ["mix", "rewrite", "curate"])
def test_a_second_run_on_a_folder_being_written_refuses(pool, stalled_caption, command):
    first = stalled_caption(pool / "out" / "%04d.tar")
    before = sorted(os.listdir(pool / "out"))
    result = run_vecap(*record_args(command, pool, ""), "-o", pool / "out" / "%04d.tar", cwd=pool)
    assert result.code == 1, result.err
    one_error_line(result, command, f"'{pool / 'out'}'", "another vecap run")
    assert sorted(os.listdir(pool / "out")) == before
    assert first.poll() is None


@pytest.mark.timeout(120)
def test_a_second_run_on_a_file_being_written_refuses(pool, stalled_caption):
    stalled_caption(pool / "out.jsonl")
    result = run_vecap("mix", pool / "pool.jsonl", "-o", pool / "out.jsonl")
    assert result.code == 1, result.err
    one_error_line(result, "mix", "out.jsonl", "another vecap run")
    assert (pool / "out.jsonl.tmp").exists()  # the first run's, untouched


@pytest.mark.timeout(120)
def test_the_other_ranks_of_a_run_share_its_folder(pool, stalled_caption):
    stalled_caption(pool / "out" / "%04d.tar", "--rank", "0", "--world-size", "2")
    result = run_vecap(
        "mix", pool / "pool.jsonl", "-o", pool / "out" / "%04d.tar", "--rank", "1",
        "--world-size", "2",
    )  # fmt: skip
    assert result.code == 0, result.err


def test_a_lock_left_by_a_killed_run_blocks_nothing(pool):
    """flock dies with its holder: the lock file a kill -9 leaves is free."""
    (pool / "out").mkdir()
    lock = pool / "out" / ".vecap-rank0.lock"
    lock.write_bytes(b"")
    result = run_vecap("mix", pool / "pool.jsonl", "-o", pool / "out" / "%04d.jsonl")
    assert result.code == 0, result.err
    with open(pool / "out" / "0000.jsonl", "rb") as f:  # and it is free again after the run
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)


# -- side files and patterns --------------------------------------------------


def vecap_in_process(capsys, *args) -> tuple[int, str]:
    from vecap_cli.cli.app import main

    with pytest.raises(SystemExit) as done:
        main(list(map(str, args)))
    return done.value.code, capsys.readouterr().err


CLASHES = {
    "rejects-is-output": ("-o", "{out}", "--rejects", "{out}"),
    "stats-is-output": ("-o", "{out}", "--stats", "{out}"),
    "stats-is-a-shard": ("-o", "{dir}/%03d.tar", "--stats", "{dir}/007.tar"),
    "rejects-is-a-shard": ("-o", "{dir}/{{shard:04d}}.jsonl", "--rejects", "{dir}/0002.jsonl"),
    "stats-is-rejects": ("--stats", "{side}", "--rejects", "{side}"),
    "rejects-is-an-input": ("--rejects", "{input}"),
    "stats-is-an-input": ("--stats", "{input}"),
}


@pytest.mark.parametrize("command", [*RECORD, "curate count"])
@pytest.mark.parametrize("clash", list(CLASHES))
def test_side_files_may_not_name_the_output_each_other_or_an_input(pool, capsys, command, clash):
    if command == "curate count" and "shard" in clash:
        pytest.skip("curate count writes one counts file")
    args = record_args(command, pool, "http://x")
    names = {"out": pool / "out.jsonl", "dir": pool / "o", "side": pool / "side.json",
             "input": pool / "pool.jsonl"}  # fmt: skip
    flags = [flag.format(**names) for flag in CLASHES[clash]]
    before = (pool / "pool.jsonl").read_bytes()
    code, err = vecap_in_process(capsys, *args, *flags)
    assert code == 2, err
    assert "Traceback" not in err
    assert "overwrite" in err or "same file" in err, err
    assert (pool / "pool.jsonl").read_bytes() == before
    assert not (pool / "o").exists() and not (pool / "out.jsonl").exists()


BAD_PATTERNS = ["o/%d-%d.tar", "o/%s.tar", "o/{shard:zz}.tar", "o/{other}.tar", "o/50%-%d.tar",
                "o/%d/{shard}.tar", "o/{}.tar"]  # fmt: skip


@pytest.mark.parametrize("command", RECORD)
@pytest.mark.parametrize("pattern", BAD_PATTERNS)
def test_a_bad_output_pattern_is_a_usage_error(pool, capsys, command, pattern):
    code, err = vecap_in_process(
        capsys, *record_args(command, pool, "http://x"), "-o", pool / pattern
    )
    assert code == 2, err
    assert "Traceback" not in err and "shard" in err, err
    assert not (pool / "o").exists()


@pytest.mark.parametrize("pattern", ["o/%06d.tar", "o/{shard}.tar", "o/{shard:03d}.jsonl",
                                     "o/100%%-%d.jsonl", "o/part-{shard}-{{x}}.jsonl"])  # fmt: skip
def test_good_patterns_still_write_shards(pool, capsys, pattern):
    code, err = vecap_in_process(capsys, "mix", pool / "pool.jsonl", "-o", pool / pattern, "-q")
    assert code == 0, err
    assert len([n for n in os.listdir(pool / "o") if not n.startswith(".")]) == 1


@pytest.mark.timeout(180)
@pytest.mark.parametrize("flag", ["--log", "--stats"])
def test_train_logs_on_a_full_disk_are_one_line(tmp_path, flag):
    pytest.importorskip("open_clip")
    from tests.train.conftest import shapes_records

    pool = write_jsonl(tmp_path / "pool.jsonl", shapes_records(tmp_path, 16, seed=2))
    result = run_vecap(
        "train", pool, "-o", tmp_path / "run", "--batch-size", "8", "--epochs", "1",
        "--workers", "0", flag, "/dev/full", env={"OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert result.code == 1, result.err
    one_error_line(result, "train", NO_SPACE, "/dev/full")
    assert leftovers(tmp_path) == []
