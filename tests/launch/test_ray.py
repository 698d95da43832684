"""`vecap launch --engine ray` on a local Ray cluster of 2 CPUs, started once for the
module; each launch is a `vecap launch --address` process, its driver, as users run it.

Every process of the cluster (and the launches) starts with a sitecustomize that
registers a caption backend counting its loads, so that a test sees what an actor
loaded."""

import logging
import os
import random
import signal
import socket
import subprocess
import sys
import time

import orjson
import pytest

from tests.conftest import REPO, make_records, run_vecap, tiny_image, write_jsonl
from tests.launch.test_slurm import KILLER, records, without_seconds
from vecap_cli.cli.app import main

# Registers `--backend counted`: each load appends its pid to the file --model names.
COUNTED = """
import os

from vecap_cli.generate.registry import CAPTION, Backend, register


class Counted:
    def __init__(self, request):
        with open(request.model, "a") as f:
            f.write(f"{os.getpid()}\\n")

    def generate(self, images):
        return [f"a picture {image.width} px wide" for image in images]


register(Backend("counted", CAPTION, Counted, help="counts its loads", model_help="a file"))
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """The address of a Ray of 2 CPUs, whose processes load COUNTED; stopped after."""
    ray = pytest.importorskip("ray")
    hooks = tmp_path_factory.mktemp("hooks")
    (hooks / "sitecustomize.py").write_text(COUNTED)
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(hooks), str(REPO), *filter(None, [saved])])
    try:
        context = ray.init(
            num_cpus=2,
            num_gpus=0,
            include_dashboard=False,
            object_store_memory=80 << 20,
            logging_level=logging.ERROR,
            log_to_driver=False,
        )
        yield context.address_info["gcs_address"]
    finally:
        ray.shutdown()
        if saved is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = saved


@pytest.fixture
def pool(tmp_path):
    """Four input files; the second holds a line that is rejected."""
    rows = make_records(400)
    for i in range(4):
        write_jsonl(tmp_path / f"in{i}.jsonl", rows[i::4])
    with open(tmp_path / "in1.jsonl", "ab") as f:
        f.write(b"[1]\n")  # rejected: not-object
    return tmp_path


def runs_in(log) -> int:
    """How many times a task ran to its summary line, by its log."""
    return log.read_text().count("vecap mix: in ")


@pytest.mark.timeout(180)
def test_a_launch_writes_what_one_process_does_and_resume_reruns_only_the_killed_task(
    cluster, pool
):
    """Task 0 reads KILLER last: it kills its actor's process (kill -9) after the
    task sealed shards of its first input. Tasks 1 and 2 go on, on the other actor
    or a new one."""
    launch = ("launch", "--engine", "ray", "--address", cluster, "--tasks", 3)
    step = (
        "--", "mix", "in0.jsonl", "in1.jsonl", "in2.jsonl", KILLER, "--keys", "vecap",
        "-o", "out/%04d.jsonl", "--shard-size", 20, "--stats", "out/stats.json",
        "--rejects", "rejects.jsonl",
    )  # fmt: skip
    killed = run_vecap(*launch, *step, cwd=pool)
    state = pool / "out" / ".vecap-launch"
    assert killed.code == 1, killed.err
    assert "vecap launch: task 0 failed: its Ray actor died" in killed.err
    assert killed.err.endswith(
        f"vecap launch: error: tasks 0 of 3 failed (logs in {state}/logs): "
        "vecap launch --resume reruns them\n"
    )
    assert sorted(os.listdir(state / "done")) == ["1", "2"]
    assert not (pool / "out" / "stats.json").exists()
    assert (pool / "out" / ".vecap-progress-0-of-3.json").exists()  # shards it had sealed
    assert "vecap launch: its Ray actor died" in (state / "logs" / "task-0.log").read_text()

    (pool / "healed").touch()
    resumed = run_vecap(*launch, "--resume", *step, cwd=pool)
    assert resumed.code == 0, resumed.err
    assert "running tasks 0 of 3 (mix)" in resumed.err
    assert [runs_in(state / "logs" / f"task-{i}.log") for i in range(3)] == [1, 1, 1]
    assert sorted(os.listdir(state / "done")) == ["0", "1", "2"]

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
    rejects = [orjson.loads(line) for line in (pool / "rejects.jsonl").read_bytes().splitlines()]
    assert [r["reason"] for r in rejects] == ["not-object"]  # the tasks' rejects, merged
    # each task told the driver (and --watch) how far it got, through its progress file
    progress = [orjson.loads((state / "progress" / f"{i}.json").read_bytes()) for i in range(3)]
    assert all(p["done"] for p in progress)
    assert sum(p["in"] for p in progress) == stats["in"]


@pytest.mark.timeout(120)
def test_an_actor_loads_the_model_once_for_its_tasks(cluster, tmp_path):
    """--cpus-per-task 2 on 2 CPUs: one actor, which runs the three tasks in turn."""
    rng = random.Random(0)
    for part in range(3):
        rows = []
        for i in range(4):
            (tmp_path / f"{part}-{i}.png").write_bytes(tiny_image(rng))
            rows.append({"key": f"k{part}{i}", "alt": "a photo", "image": f"{part}-{i}.png"})
        write_jsonl(tmp_path / f"in{part}.jsonl", rows)
    loads = tmp_path / "loads.txt"
    result = run_vecap(
        "launch", "--engine", "ray", "--address", cluster, "--tasks", 3, "--cpus-per-task", 2,
        "--", "caption", "in0.jsonl", "in1.jsonl", "in2.jsonl", "--backend", "counted",
        "--model", loads, "-o", "vec/%03d.jsonl", "--stats", "vec/stats.json",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.code == 0, result.err
    assert "1 actor of 2 CPU each" in result.err
    assert len(loads.read_text().splitlines()) == 1  # not 3: loaded by the first task
    stats = orjson.loads((tmp_path / "vec" / "stats.json").read_bytes())
    assert (stats["in"], stats["out"]) == (12, 12)
    captions = records((tmp_path / "vec").glob("*.jsonl"))
    assert all(r["vec"].startswith("a picture ") for r in captions)


@pytest.mark.timeout(120)
def test_ctrl_c_ends_the_tasks_and_exits_130(cluster, pool):
    paused = (
        f"pipe:echo $PPID > actor.pid; while test ! -e go; do sleep 0.1; done; cat {pool}/in0.jsonl"
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "vecap_cli", "launch", "--engine", "ray", "--address", cluster,
         "--tasks", "1", "--", "mix", paused, "-o", "out/%d.jsonl"],
        cwd=pool,
        stderr=subprocess.PIPE,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not (pool / "actor.pid").exists() or not (pool / "actor.pid").read_text():
            assert time.monotonic() < deadline and proc.poll() is None, "the task did not start"
            time.sleep(0.1)
        actor = int((pool / "actor.pid").read_text())
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        (pool / "go").touch()  # the input's shell ends, whatever happened
        proc.kill()
    assert proc.returncode == 130, err.decode()
    assert "Traceback" not in err.decode()
    assert "interrupted: the running tasks are stopped, not marked done" in err.decode()
    assert os.listdir(pool / "out" / ".vecap-launch" / "done") == []
    deadline = time.monotonic() + 30
    while os.path.exists(f"/proc/{actor}") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not os.path.exists(f"/proc/{actor}"), "the actor outlived the launch"


def test_dry_run_prints_the_tasks_and_starts_nothing(tmp_path, capsys):
    pytest.importorskip("ray")
    write_jsonl(tmp_path / "in.jsonl", make_records(5))
    state = tmp_path / "state"
    code = vecap(
        "launch", "--engine", "ray", "--tasks", 2, "--dry-run", "--state", state,
        "--", "mix", tmp_path / "in.jsonl", "-o", tmp_path / "out" / "%d.jsonl",
    )  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 2
    assert lines[1].startswith(f"cd {os.getcwd()} && {sys.executable} -m vecap_cli mix ")
    assert lines[1].endswith(f" --rank 1 --world-size 2 >> {state}/logs/task-1.log 2>&1")
    assert "started nothing (--dry-run)" in err
    assert os.listdir(state / "done") == [] and not (tmp_path / "out").exists()


MIX = ("--", "mix", "in.jsonl", "-o", "out/%d.jsonl")


def vecap(*args) -> int:
    with pytest.raises(SystemExit) as done:
        main([str(arg) for arg in args])
    return done.value.code


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (("--engine", "ray", "--partition", "gpu"), "--partition: the ray engine does not take it"),
        (("--engine", "ray", "--sbatch=--qos=low"), "--sbatch: the ray engine does not take it"),
        (("--engine", "ray", "--time", "1:00:00"), "--time: the ray engine does not take it"),
        (("--engine", "slurm", "--address", "auto"), "--address: the slurm engine does not take"),
    ],
)
def test_an_engine_refuses_the_flags_of_another(flags, says, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")
    monkeypatch.chdir(tmp_path)
    write_jsonl(tmp_path / "in.jsonl", make_records(5))
    assert vecap("launch", *flags, "--tasks", 2, "--dry-run", *MIX) == 2
    assert says in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_without_ray_it_says_how_to_get_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails as when it is missing
    monkeypatch.chdir(tmp_path)
    write_jsonl(tmp_path / "in.jsonl", make_records(5))
    assert vecap("launch", "--engine", "ray", "--tasks", 2, *MIX) == 1
    err = capsys.readouterr().err
    assert err == "vecap launch: error: the ray engine needs Ray: pip install 'vecap[ray]'\n"


def test_an_address_where_no_ray_answers_is_one_line(tmp_path, capsys, monkeypatch):
    pytest.importorskip("ray")
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{free.getsockname()[1]}"  # closed again: nothing listens
    monkeypatch.chdir(tmp_path)
    write_jsonl(tmp_path / "in.jsonl", make_records(5))
    assert vecap("launch", "--engine", "ray", "--address", address, "--tasks", 2, *MIX) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"vecap launch: error: --address {address}: no Ray cluster answers")
    assert len(err.splitlines()) == 1


class FakeRay:
    """What the driver's loop uses of Ray: each wait returns the oldest task running."""

    class exceptions:
        class RayError(Exception):
            pass

        class RayActorError(RayError):
            pass

    def wait(self, refs, num_returns, timeout):
        return refs[:1], refs[1:]

    def get(self, ref):
        if ref == "died":
            raise self.exceptions.RayActorError("The actor died unexpectedly.\nmore")
        return ref, "here"  # (exit status, where it ran)


ENDINGS = {1: "died", 2: 3, 3: "died"}  # the others exit 0


class FakeActor:
    """An actor whose task ends as ENDINGS says (an exit status, or its death)."""

    made = 0

    def __init__(self):
        FakeActor.made += 1
        self.run = self

    @classmethod
    def remote(cls, *args):
        if not args:
            return cls()
        argv = args[0]
        return ENDINGS.get(int(argv[argv.index("--rank") + 1]), 0)


def test_the_driver_replaces_a_dead_actor_while_tasks_wait_and_ticks(tmp_path):
    from vecap_cli.launch.engine import Run
    from vecap_cli.launch.ray_engine import _Pool
    from vecap_cli.launch.state import Launch, State
    from vecap_cli.launch.step import Step

    state = State(tmp_path / "state")
    os.makedirs(state.logs_dir)
    os.makedirs(state.done_dir)
    launch = Launch(Step(("mix",), ("in.jsonl", "-o", "o/%d.jsonl"), "o/%d.jsonl"), 4, "/")
    lines, ticks = [], []
    FakeActor.made = 0
    pool = _Pool(
        FakeRay(), Run(launch, state, (0, 1, 2, 3), False, False, lines.append), FakeActor, 2
    )
    pool.drive(ticks.append)
    # task 1's actor died while task 3 waited: a third actor ran it; task 3's, at the
    # end, left no task for a new one
    assert FakeActor.made == 3 and len(pool.actors) == 1
    assert (ticks[-1].done, ticks[-1].failed, ticks[-1].running) == ((0,), (1, 2, 3), ())
    assert [tick.running for tick in ticks] == [(1, 2), (2, 3), (3,), ()]
    assert lines == [
        f"task 1 failed: its Ray actor died (The actor died unexpectedly.); its log: {state.logs_dir}/task-1.log",
        f"task 2 failed: exit 3; its log: {state.logs_dir}/task-2.log",
        f"task 3 failed: its Ray actor died (The actor died unexpectedly.); its log: {state.logs_dir}/task-3.log",
    ]
    assert "its Ray actor died" in (tmp_path / "state" / "logs" / "task-3.log").read_text()
    assert state.pending(4) == [1, 2, 3]  # marked by the driver, once it saw exit 0
