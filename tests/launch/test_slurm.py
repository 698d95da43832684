"""`vecap launch --engine slurm` as users run it, with no Slurm: a single-node Slurm
does not start here in under a minute, so (as issue 16 allows) the generated array
script runs under bash once per task, with the SLURM_* variables an array sets."""

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from tests.conftest import make_records, run_vecap, write_jsonl


def run_task(state: Path, task: int) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "SLURM_ARRAY_JOB_ID": "7",
        "SLURM_ARRAY_TASK_ID": str(task),
        "SLURM_JOB_ID": str(8 + task),
    }
    script = state / "tasks.sbatch"
    return subprocess.run(["bash", script], env=env, capture_output=True, text=True, timeout=300)


def records(paths) -> list[dict]:
    found = [orjson.loads(line) for path in paths for line in Path(path).read_bytes().splitlines()]
    return sorted(found, key=lambda r: r["key"])


def without_seconds(stats: dict) -> dict:
    return {k: v for k, v in stats.items() if k != "seconds"}


@pytest.fixture
def pool(tmp_path):
    """Four input files; the second holds a line that is rejected."""
    rows = make_records(400)
    for i in range(4):
        write_jsonl(tmp_path / f"in{i}.jsonl", rows[i::4])
    with open(tmp_path / "in1.jsonl", "ab") as f:
        f.write(b"[1]\n")  # rejected: not-object
    return tmp_path


# The last input kills the vecap that reads it (kill -9: no cleanup, no marker) until
# the file `healed` exists: a task killed mid-way, after sealing shards of its first input.
KILLER = "pipe:cat in3.jsonl; test -e healed || kill -9 $PPID"


def test_tasks_write_what_one_process_writes_and_resume_reruns_only_the_killed_one(pool):
    launch = ("launch", "--engine", "slurm", "--tasks", 2, "--dry-run")
    step = (
        "--", "mix", "in0.jsonl", "in1.jsonl", "in2.jsonl", KILLER, "--keys", "vecap",
        "-o", "out/%04d.jsonl", "--shard-size", 20, "--stats", "out/stats.json",
    )  # fmt: skip
    result = run_vecap(*launch, *step, cwd=pool)
    assert result.code == 0, result.err
    state = pool / "out" / ".vecap-launch"
    assert f"sbatch --parsable {state}/tasks.sbatch" in result.out.decode()
    assert "#SBATCH --array=0-1\n" in (state / "tasks.sbatch").read_text()

    assert run_task(state, 0).returncode == 0
    killed = run_task(state, 1)
    assert killed.returncode == 137, killed.stderr
    assert sorted(os.listdir(state / "done")) == ["0"]
    assert (pool / "out" / ".vecap-progress-1-of-2.json").exists()  # shards it had sealed
    refused = run_vecap("launch", "--merge", state)
    assert refused.code == 1
    assert (
        refused.err
        == "vecap launch: error: tasks 1 of 2 are not done (vecap launch --resume runs them)\n"
    )

    resumed = run_vecap(*launch, "--resume", *step, cwd=pool)
    assert resumed.code == 0, resumed.err
    script = (state / "tasks.sbatch").read_text()
    assert "#SBATCH --array=1\n" in script
    assert ' --resume --rank "$task" --world-size 2\n' in script
    (pool / "healed").touch()
    assert run_task(state, 1).returncode == 0
    merged = run_vecap("launch", "--merge", state)
    assert merged.code == 0, merged.err

    one = run_vecap(
        "mix", *(pool / f"in{i}.jsonl" for i in range(4)), "--keys", "vecap",
        "-o", pool / "one.jsonl", "--stats", pool / "one.json",
    )  # fmt: skip
    assert one.code == 0, one.err
    assert records((pool / "out").glob("*.jsonl")) == records([pool / "one.jsonl"])
    stats = orjson.loads((pool / "out" / "stats.json").read_bytes())
    expected = orjson.loads((pool / "one.json").read_bytes())
    assert without_seconds(stats) == without_seconds(expected)
    assert stats["rejected"] == {"not-object": 1} and stats["dropped"]

    done = run_vecap(*launch, "--resume", *step, cwd=pool)
    assert done.code == 0 and done.out == b""
    assert "all 2 tasks are done: nothing to run" in done.err


def test_a_curate_launch_keeps_and_counts_what_one_process_does(tmp_path):
    from tests.cli.test_curate import METADATA, make_pool

    write_jsonl(tmp_path / "pool.jsonl", make_pool(2000))
    (tmp_path / "meta.json").write_bytes(orjson.dumps(METADATA))
    flags = ("--metadata", "meta.json", "--t", "200", "--seed", "3")
    result = run_vecap(
        "launch", "--engine", "slurm", "--tasks", 3, "--dry-run",
        "--", "curate", "pool.jsonl", *flags, "-o", "kept/%03d.jsonl", "--stats", "kept/stats.json",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.code == 0, result.err
    state = tmp_path / "kept" / ".vecap-launch"
    for task in range(3):
        assert run_task(state, task).returncode == 0
    assert run_vecap("launch", "--merge", state).code == 0
    one = run_vecap(
        "curate", "pool.jsonl", *flags, "-o", "one.jsonl", "--stats", "one.json", cwd=tmp_path
    )
    assert one.code == 0, one.err

    assert records((tmp_path / "kept").glob("*.jsonl")) == records([tmp_path / "one.jsonl"])
    merged = orjson.loads((tmp_path / "kept" / "stats.json").read_bytes())
    expected = orjson.loads((tmp_path / "one.json").read_bytes())
    assert merged.pop("expected_kept") == pytest.approx(expected.pop("expected_kept"), abs=0.01)
    assert without_seconds(merged) == without_seconds(expected)  # `curate` summary included


def test_arguments_reach_the_step_as_written_never_through_a_shell(tmp_path):
    """Spaces, quotes and $(...) in the working folder, a file name and a flag."""
    folder = tmp_path / "it's a $(dir)"
    folder.mkdir()
    write_jsonl(folder / "in put.jsonl", [{"key": "a", "alt": "x", "vecap": "y"}])
    sep = " $(touch pwned); `touch pwned` 'q' \"qq\" \\ "
    result = run_vecap(
        "launch", "--engine", "slurm", "--tasks", 1, "--dry-run", "--state", tmp_path / "state",
        "--", "mix", "in put.jsonl", "--policy", "concat", "--keys", "alt,vecap", "--sep", sep,
        "-o", "out/%d.jsonl",
        cwd=folder,
    )  # fmt: skip
    assert result.code == 0, result.err
    assert run_task(tmp_path / "state", 0).returncode == 0
    assert records([folder / "out" / "0.jsonl"])[0]["text"] == f"x{sep}y"
    assert not list(tmp_path.rglob("pwned"))


def fake_sbatch(tmp_path: Path, body: str) -> dict:
    """A PATH whose `sbatch` is a Python script running `body` (argv in ARGS)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    sbatch = bin_dir / "sbatch"
    sbatch.write_text(f"#!{sys.executable}\nimport sys\nARGS = sys.argv[1:]\n{body}\n")
    sbatch.chmod(0o755)
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}


MIX = ("--", "mix", "in.jsonl", "-o", "out/%04d.tar")


@pytest.fixture
def small(tmp_path):
    write_jsonl(tmp_path / "in.jsonl", make_records(10))
    return tmp_path


def test_submits_the_array_then_the_merge_after_it(small):
    calls = small / "calls.jsonl"
    record = f"open({str(calls)!r}, 'a').write(repr(ARGS) + '\\n')"
    env = fake_sbatch(small, f"{record}\nprint('4242;cluster' if len(ARGS) == 2 else '4243')")
    result = run_vecap(
        "launch", "--engine", "slurm", "--tasks", 4, "--partition", "gpu", "--gpus-per-task", 1,
        "--time", "4:00:00", "--sbatch=--qos=low", *MIX, "--stats", "out/s.json",
        cwd=small, env=env,
    )  # fmt: skip
    assert result.code == 0, result.err
    state = small / "out" / ".vecap-launch"
    assert calls.read_text().splitlines() == [
        repr(["--parsable", f"{state}/tasks.sbatch"]),
        repr(["--parsable", "--dependency=afterok:4242", f"{state}/merge.sbatch"]),
    ]
    said = result.err.splitlines()
    assert said[0].startswith("vecap launch: submitted job 4242: tasks 0-3")
    assert said[1] == f"vecap launch: to watch it: vecap launch --watch {state}"
    assert said[2] == "vecap launch: submitted job 4243: merges --stats once every task is done"
    script = (state / "tasks.sbatch").read_text()
    for line in ("--partition=gpu", "--gpus-per-task=1", "--time=4:00:00", "--qos=low"):
        assert f"\n#SBATCH {line}\n" in script
    merge = (state / "merge.sbatch").read_text()
    assert "#SBATCH --kill-on-invalid-dep=yes\n" in merge
    assert merge.endswith(f"-m vecap_cli launch --merge {state}\n")


def test_a_step_with_rejects_alone_gets_a_merge_job_and_tasks_report_progress(small):
    result = run_vecap(
        "launch", "--engine", "slurm", "--tasks", 2, "--dry-run", *MIX, "--rejects", "r.jsonl",
        cwd=small,
    )  # fmt: skip
    assert result.code == 0, result.err
    state = small / "out" / ".vecap-launch"
    assert "merges the tasks' --rejects once" in (state / "merge.sbatch").read_text()
    script = (state / "tasks.sbatch").read_text()
    assert f'\nexport VECAP_LAUNCH_PROGRESS={state}/progress/"$task".json\n' in script


def test_a_refusing_or_missing_sbatch_is_one_line(small):
    env = fake_sbatch(
        small,
        "sys.stderr.write('sbatch: warning: x\\nsbatch: error: invalid partition\\n')\nsys.exit(1)",
    )
    refused = run_vecap("launch", "--engine", "slurm", "--tasks", 2, *MIX, cwd=small, env=env)
    assert (refused.code, refused.err) == (
        1,
        "vecap launch: error: sbatch refused the job: sbatch: error: invalid partition\n",
    )
    empty = small / "empty"
    empty.mkdir()
    missing = run_vecap(
        "launch", "--engine", "slurm", "--tasks", 2, *MIX, cwd=small, env={"PATH": str(empty)}
    )
    assert missing.code == 1
    assert missing.err.startswith("vecap launch: error: sbatch not found")
    assert len(missing.err.splitlines()) == 1


@pytest.mark.parametrize(
    ("flags", "step", "says"),
    [
        ((), ("--rank", "1"), "--rank: vecap launch sets it"),
        ((), ("--world-size", "2"), "--world-size: vecap launch sets it"),
        ((), ("--resume",), "use vecap launch --resume"),
        ((), ("-o", "out.tar"), "give a shard pattern"),
        ((), ("-o", "-"), "give a shard pattern"),
        (("--sbatch", "--qos=low\n--array=3"), (), "one #SBATCH line"),
        (("--sbatch", "--array=3"), (), "vecap launch writes --array itself"),
        (("--partition", "a b"), (), "one word"),
        ((), ("--bogus",), "No such option"),
    ],
)
def test_refusals_are_usage_errors(small, flags, step, says):
    result = run_vecap(
        "launch", "--engine", "slurm", "--tasks", 2, "--dry-run", *flags,
        "--", "mix", "in.jsonl", "-o", "out/%d.tar", *step,
        cwd=small,
    )  # fmt: skip
    assert result.code == 2
    assert says in " ".join(result.err.replace("│", "").split())
    assert not (small / "out").exists()


@pytest.mark.parametrize(
    ("step", "says"),
    [
        (("train", "in.jsonl", "-o", "runs/x"), "'train' cannot be launched"),
        (("mix", "-o", "out/%d.tar"), "the tasks have no stdin"),
        (("curate", "count", "in.jsonl", "--metadata", "m.json"), "every task writes a file"),
    ],
)
def test_a_step_a_launch_cannot_split_is_refused(small, step, says):
    result = run_vecap("launch", "--engine", "slurm", "--tasks", 2, "--", *step, cwd=small)
    assert result.code == 2
    assert says in " ".join(result.err.replace("│", "").split())


def test_resume_or_a_fresh_launch_refuses_a_state_holding_another_launch(small):
    launch = ("launch", "--engine", "slurm", "--dry-run")
    assert run_vecap(*launch, "--tasks", 2, *MIX, cwd=small).code == 0
    resumed = run_vecap(*launch, "--tasks", 3, "--resume", *MIX, cwd=small)
    assert resumed.code == 1
    assert resumed.err == (
        f"vecap launch: error: cannot resume: '{small}/out/.vecap-launch' holds another launch "
        "(tasks: 2 there, 3 now): resume it with its own STEP ARGS, or give another --state\n"
    )
    other = run_vecap(*launch, "--tasks", 2, *MIX, "--shard-size", 5, cwd=small)
    assert other.code == 1
    assert "holds another launch (ARGS: in.jsonl -o out/%04d.tar there" in other.err
