"""A launch as a whole: its tasks' progress files added up (launch/progress.py)."""

import os
import signal
import subprocess
import sys
import time

import orjson
import pytest

from tests.conftest import REPO, make_records, run_vecap, write_jsonl
from vecap_cli.launch.engine import Run
from vecap_cli.launch.progress import Report, Watch, read_report
from vecap_cli.launch.state import Launch, State
from vecap_cli.launch.step import Step


def report(n_in, out, done_bytes, total, done=False, shares=True) -> bytes:
    return orjson.dumps(
        {
            "in": n_in,
            "out": out,
            "bytes_done": done_bytes,
            "bytes_total": total,
            "shares_records": shares,
            "done": done,
            "time": 1.0,
        }
    )


@pytest.fixture
def launched(tmp_path):
    state = State(str(tmp_path / "state"))
    launch = Launch(Step(("mix",), ("in.jsonl",), "out/%d.jsonl"), 3, str(tmp_path))
    state.begin(launch, resume=False)
    return state, launch


def mark_done(state: State, task: int) -> None:
    open(os.path.join(state.done_dir, str(task)), "w").close()


def test_three_tasks_add_up_and_a_done_task_counts_whole(launched):
    state, launch = launched
    files = [state.progress_file(task) for task in range(3)]
    open(files[0], "wb").write(report(100, 90, 1000, 1000, done=True))
    open(files[1], "wb").write(report(50, 45, 500, 1000))
    mark_done(state, 0)
    watch = Watch(state, launch)

    first = watch.read()
    assert (first.done, first.running, first.n_in, first.n_out) == (1, 1, 150, 135)
    assert first.bytes_total is None  # task 2 has not said how much it reads
    assert first.work == pytest.approx(1.5)
    assert not first.finished
    assert first.line() == "1/3 tasks done (1 running) · 150 in · 135 out · 1.5 kB read"

    open(files[2], "wb").write(report(0, 0, 0, 1000))
    second = watch.read()
    assert (second.bytes_done, second.bytes_total) == (1500, 3000)
    assert second.line().endswith("· 1.5 kB of 3.0 kB read")

    for task in (1, 2):
        open(files[task], "wb").write(report(100, 99, 1000, 1000, done=True))
        mark_done(state, task)
    last = watch.read()
    assert last.finished and last.work == 3 and last.n_in == 300
    assert last.line() == "3/3 tasks done · 300 in · 288 out · 3.0 kB of 3.0 kB read"


@pytest.mark.parametrize(
    "damaged",
    [
        b'{"in": 7, "out": 1, "bytes_done": 1',  # half written
        b"",
        b"[1, 2]",
        report(-1, 0, 0, 0),
        report(1.5, 0, 0, 0),
        report(1, 0, "x", 0),
        b'{"in": 1}',
        b"\xff\xfe",
    ],
)
def test_a_damaged_progress_file_is_no_news_never_an_error(launched, damaged):
    state, launch = launched
    path = state.progress_file(1)
    open(path, "wb").write(report(40, 40, 400, 1000))
    watch = Watch(state, launch)
    assert watch.read().n_in == 40
    open(path, "wb").write(damaged)
    assert read_report(path) is None
    assert watch.read().n_in == 40  # the last good reading stands
    assert Watch(state, launch).read().n_in == 0


def test_a_task_done_without_a_progress_file_counts_done(launched):
    state, launch = launched
    mark_done(state, 2)
    snapshot = Watch(state, launch).read()
    assert (snapshot.done, snapshot.work, snapshot.bytes_total) == (1, 1, None)
    assert snapshot.line() == "1/3 tasks done · 0 in · 0 out"


def test_watch_refuses_a_folder_without_a_launch_and_other_flags(tmp_path):
    none = run_vecap("launch", "--watch", tmp_path)
    assert (none.code, none.err) == (1, f"vecap launch: error: '{tmp_path}' holds no launch\n")
    both = run_vecap("launch", "--watch", tmp_path, "--tasks", 2)
    assert both.code == 2 and "takes STATE alone" in both.err


@pytest.mark.timeout(60)
def test_ctrl_c_ends_a_watch_with_130(launched):
    state, _ = launched
    proc = subprocess.Popen(
        [sys.executable, "-m", "vecap_cli", "launch", "--watch", state.folder],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stderr=subprocess.PIPE,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    first = proc.stderr.readline()  # said once it has read the launch: in its loop
    assert first == b"vecap launch: 0/3 tasks done \xc2\xb7 0 in \xc2\xb7 0 out\n"
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err.decode()
    assert "Traceback" not in err.decode()


def test_a_driver_runs_tasks_with_their_environment_and_waits_on_a_watch(tmp_path):
    """The shape of an engine that runs tasks from Python (Ray): each task gets
    `run.environment(task)`, and the driver's wait loop ticks a Watch."""
    write_jsonl(tmp_path / "in.jsonl", make_records(30))
    step = Step(("mix",), ("in.jsonl", "-o", "out/%d.jsonl"), "out/%d.jsonl")
    launch = Launch(step, 2, str(tmp_path))
    state = State(str(tmp_path / "state"))
    state.begin(launch, resume=False)
    run = Run(launch, state, (0, 1), resume=False, dry_run=False, log=lambda line: None)
    procs = {
        task: subprocess.Popen(
            [*run.argv(), "--rank", str(task), "--world-size", "2", "-q"],
            cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": str(REPO), **run.environment(task)},
        )
        for task in run.tasks
    }
    with Watch(state, launch) as watch:
        while not watch.update().finished:
            for task, proc in list(procs.items()):
                if proc.poll() == 0:
                    mark_done(state, task)
                    del procs[task]
                assert proc.returncode in (None, 0)
            time.sleep(0.05)
    snapshot = watch.read()
    assert (snapshot.n_in, snapshot.n_out, snapshot.work) == (30, 30, 2)
    assert all(report.done and report.shares_records for report in watch.reports.values())


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_counting_task_reports_its_progress_too(tmp_path, workers):
    from tests.cli.test_curate import METADATA, make_pool

    write_jsonl(tmp_path / "pool.jsonl", make_pool(300))
    (tmp_path / "meta.json").write_bytes(orjson.dumps(METADATA))
    path = tmp_path / "progress.json"
    counted = run_vecap(
        "curate", "count", "pool.jsonl", "--metadata", "meta.json", "-o", "c.json",
        "--rank", 1, "--world-size", 2, "--workers", workers,
        cwd=tmp_path, env={"VECAP_LAUNCH_PROGRESS": str(path)},
    )  # fmt: skip
    assert counted.code == 0, counted.err
    size = (tmp_path / "pool.jsonl").stat().st_size
    written = read_report(str(path))
    assert written == Report(150, written.n_out, size, size, True, True)
