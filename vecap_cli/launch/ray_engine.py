"""The ray engine: a launch's tasks on a Ray cluster, this process its driver.

The tasks run on a pool of Ray actors, each holding --cpus-per-task cores and
--gpus-per-task GPUs, as many as the cluster holds at once (at most one a
task). An actor runs its tasks one after the other in its own process: it runs
the task's command line there (as `python -m vecap_cli` would, fd 1 and 2 sent
to the task's log) and keeps the model a task built for the next
(generate.load.keep_models), so a GPU step loads its model once per actor, not
once per task. The driver marks a task done (STATE/done/I, by a rename) once its
step exited 0.

An actor that dies (killed, out of memory) fails the task it was running, and
only that one: a new actor takes the next task. When every task has ended, the
failed ones are named in one line (exit 1; `vecap launch --resume` reruns them),
or, with --stats or --rejects, they are merged. The driver shows the launch as
`vecap launch --watch` would (each task writes its progress file). Ctrl-C ends
the tasks (exit 130).

Ray is an optional dependency, imported when a launch runs on it.
"""

from __future__ import annotations

import logging
import os
import runpy
import shlex
import socket
import sys
import traceback
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import ModuleType

from vecap_cli.errors import VecapError, first_line
from vecap_cli.launch.engine import Engine, Run, engine
from vecap_cli.launch.merge import merge
from vecap_cli.launch.progress import Watch
from vecap_cli.launch.state import task_ranges

TICK_SECONDS = 1.0  # how often the driver looks up from its wait (see Progress)
CONNECT_SECONDS = 10.0  # for the head of --address to accept a connection
# A Ray started for one launch passes command lines and exit codes, nothing large:
# its object store needs little of the shared memory Ray would take by default.
LOCAL_OBJECT_STORE = 128 << 20


@dataclass(frozen=True)
class Progress:
    """Where a launch stands, as the driver sees it at each tick."""

    tasks: int  # the launch's task count
    pending: tuple[int, ...]  # what this run was asked to run
    done: tuple[int, ...]
    failed: tuple[int, ...]
    running: tuple[int, ...]


Tick = Callable[[Progress], None]


def _no_progress(progress: Progress) -> None:
    """The place a progress display hooks in (vecap_cli/launch/progress.py)."""


@engine(
    "ray",
    help="a Ray cluster (--address; default: a Ray started for this launch), "
    "a pool of actors that load the model once",
)
@dataclass(frozen=True)
class RayEngine(Engine):
    address: str | None = None  # ray.init's: HOST:PORT, ray://HOST:PORT or auto
    gpus_per_task: int | None = None
    cpus_per_task: int | None = None

    @property
    def cpus(self) -> int:
        return self.cpus_per_task or 1

    @property
    def gpus(self) -> int:
        return self.gpus_per_task or 0

    def start(self, run: Run, on_tick: Tick = _no_progress) -> None:
        ray = _import_ray()
        if run.dry_run:
            print("\n".join(_commands(run)))
            run.log(f"would run {self._what(run)}; started nothing (--dry-run)")
            return
        _connect(ray, self.address)
        try:
            pool = _Pool(ray, run, self._actor(ray), self._pool_size(ray, len(run.tasks)))
            run.log(f"running {self._what(run, len(pool.actors))}; logs in {run.state.logs_dir}")
            with _watching(run) as watch:

                def tick(progress: Progress) -> None:
                    watch.update()
                    on_tick(progress)

                pool.drive(tick)
        except KeyboardInterrupt:
            run.log("interrupted: the running tasks are stopped, not marked done")
            raise
        finally:
            ray.shutdown()  # ends this job's actors, and a Ray started for it
        _report(run, pool.failed)

    def _what(self, run: Run, actors: int | None = None) -> str:
        launch = run.launch
        where = f"Ray at {self.address}" if self.address else "a Ray started for this launch"
        each = f"{self.cpus} CPU" + (f", {self.gpus} GPU" if self.gpus else "")
        pool = "actors" if actors is None else f"{actors} actor{'s' * (actors != 1)}"
        return (
            f"tasks {task_ranges(run.tasks)} of {launch.tasks} ({launch.step.name}) "
            f"on {where}: {pool} of {each} each"
        )

    def _actor(self, ray: ModuleType):
        """The actor class, with the resources of one task."""
        return ray.remote(TaskRunner).options(num_cpus=self.cpus, num_gpus=self.gpus)

    def _pool_size(self, ray: ModuleType, tasks: int) -> int:
        """As many actors as the cluster holds at once, at most one a task."""
        total = ray.cluster_resources()
        fit = int(total.get("CPU", 0) // self.cpus)
        if self.gpus:
            fit = min(fit, int(total.get("GPU", 0) // self.gpus))
        if fit < 1:
            raise VecapError(
                f"the Ray cluster holds {total.get('CPU', 0):g} CPUs and "
                f"{total.get('GPU', 0):g} GPUs: not one task's --cpus-per-task {self.cpus}"
                + (f" and --gpus-per-task {self.gpus}" if self.gpus else "")
            )
        return min(tasks, fit)


def _watching(run: Run) -> Watch:
    """The launch's progress as `vecap launch --watch` shows it: one bar on a
    terminal, else a line a minute; nothing with -q."""
    from vecap_cli.stream.progress import shown

    return Watch(
        run.state, run.launch, bar=shown(not run.quiet), log=None if run.quiet else run.log
    )


def _import_ray() -> ModuleType:
    try:
        import ray
    except ImportError:
        raise VecapError("the ray engine needs Ray: pip install 'vecap[ray]'") from None
    return ray


def _connect(ray: ModuleType, address: str | None) -> None:
    """This process as a driver of the cluster at `address`, or of a Ray of its own.
    Ray's own lines stay in its logs (/tmp/ray/session_latest/logs): a task's
    output is in the task's log."""
    quiet = {"logging_level": logging.ERROR, "log_to_driver": False}
    try:
        if address:
            _reachable(address)
            ray.init(address=address, **quiet)
        else:  # "local": a new Ray even when one runs here (--address auto joins it)
            ray.init(
                address="local",
                include_dashboard=False,
                object_store_memory=LOCAL_OBJECT_STORE,
                **quiet,
            )
    except (ConnectionError, RuntimeError, ValueError) as err:
        what = f"join the Ray cluster at {address}" if address else "start a local Ray"
        raise VecapError(f"cannot {what}: {first_line(err)}") from None


def _reachable(address: str) -> None:
    """One line unless the head at `address` (HOST:PORT) answers within CONNECT_SECONDS:
    Ray would retry a dead address for minutes. ray:// and auto go as they are."""
    host, _, port = address.rpartition(":")
    if "://" in address or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), CONNECT_SECONDS).close()
    except OSError as err:
        raise VecapError(
            f"--address {address}: no Ray cluster answers there ({err.strerror or err})"
        ) from None


class _Pool:
    """The driver's loop: a task to each idle actor, a new actor for a dead one."""

    def __init__(self, ray: ModuleType, run: Run, actor_class, size: int):
        self.ray, self.run, self.actor_class = ray, run, actor_class
        self.actors = [actor_class.remote() for _ in range(size)]
        self.queue = deque(run.tasks)
        self.running: dict[object, tuple[int, object]] = {}  # ObjectRef -> (task, actor)
        self.done: list[int] = []
        self.failed: list[int] = []

    def drive(self, on_tick: Tick) -> None:
        """Runs every task; `on_tick` is called after each wait, TICK_SECONDS at most."""
        for actor in self.actors:
            self._next(actor)
        while self.running:
            ready, _ = self.ray.wait(list(self.running), num_returns=1, timeout=TICK_SECONDS)
            for ref in ready:
                task, actor = self.running.pop(ref)
                ended = self._ended(task, ref)
                (self.done if ended == "done" else self.failed).append(task)
                if ended == "died":
                    self.actors.remove(actor)
                    actor = self._new_actor() if self.queue else None
                self._next(actor)
            on_tick(self.progress())

    def progress(self) -> Progress:
        return Progress(
            self.run.launch.tasks,
            self.run.tasks,
            tuple(self.done),
            tuple(self.failed),
            tuple(task for task, _ in self.running.values()),
        )

    def _new_actor(self):
        actor = self.actor_class.remote()
        self.actors.append(actor)
        return actor

    def _next(self, actor) -> None:
        if not (self.queue and actor):
            return
        task, launch = self.queue.popleft(), self.run.launch
        argv = [*self.run.argv(), "--rank", str(task), "--world-size", str(launch.tasks)]
        log, env = self.run.state.task_log(task), self.run.environment(task)
        ref = actor.run.remote(argv, launch.cwd, log, env)
        self.running[ref] = (task, actor)

    def _ended(self, task: int, ref: object) -> str:
        """How `task` ended: "done", "failed", or "died" with its actor; a failure is
        one line on stderr."""
        state, errors = self.run.state, self.ray.exceptions
        ended = "failed"
        try:
            code, where = self.ray.get(ref)
        except errors.RayActorError as err:
            ended, why = "died", f"its Ray actor died ({first_line(err)})"
            _append(state.task_log(task), f"vecap launch: {why}\n")
        except errors.RayError as err:  # the actor's method raised: the log or marker
            why = first_line(getattr(err, "cause", None) or err)
        else:
            if code == 0:
                # Marked here, not in the actor: the driver's own write is what its
                # report, the merge and --resume then read, whatever a network file
                # system shows of other nodes' writes.
                state.mark_done(task, f"ray actor {where}")
                return "done"
            why = f"exit {code}"
        self.run.log(f"task {task} failed: {why}; its log: {state.task_log(task)}")
        return ended


def _report(run: Run, failed: list[int]) -> None:
    """One line on what the run left: the failed tasks (exit 1), or the merged stats."""
    launch, state = run.launch, run.state
    if failed:
        raise VecapError(
            f"tasks {task_ranges(failed)} of {launch.tasks} failed (logs in {state.logs_dir}): "
            "vecap launch --resume reruns them"
        )
    run.log(f"tasks {task_ranges(run.tasks)} of {launch.tasks} done")
    if launch.step.merged:
        merge(state, run.log)


def _commands(run: Run) -> Iterator[str]:
    """What each task runs, as a shell would run it (what --dry-run prints)."""
    launch, state = run.launch, run.state
    for task in run.tasks:
        argv = [*run.argv(), "--rank", str(task), "--world-size", str(launch.tasks)]
        yield (
            f"cd {shlex.quote(launch.cwd)} && {shlex.join(argv)} "
            f">> {shlex.quote(state.task_log(task))} 2>&1"
        )


def _append(path: str, line: str) -> None:
    try:
        with open(path, "a") as f:
            f.write(line)
    except OSError:
        pass  # the line is on the driver's stderr too


class TaskRunner:
    """A Ray actor: runs tasks one after the other, each in this process, and keeps
    the model one built for the next (a GPU step loads its model once)."""

    def __init__(self) -> None:
        from vecap_cli.generate.load import keep_models

        keep_models()

    def pid(self) -> int:
        return os.getpid()

    def run(self, argv: list[str], cwd: str, log: str, env: dict[str, str]) -> tuple[int, str]:
        """`argv` run in `cwd` with `env` added to the environment, its output appended
        to `log`: its exit status, and where it ran."""
        with open(log, "ab") as out, _output_to(out.fileno()), _environment(env):
            code = _run_in_process(argv, cwd)
        return code, f"{os.getpid()} on {socket.gethostname()}"


def _run_in_process(argv: list[str], cwd: str) -> int:
    """`argv` (PYTHON -m MODULE ARGS...) run here as that Python would run it: its
    exit status; an exception is a traceback in the output and status 1."""
    _, flag, module, *args = argv
    assert flag == "-m", argv
    saved_argv, saved_cwd = sys.argv, os.getcwd()
    sys.argv = [module, *args]
    try:
        os.chdir(cwd)
        runpy.run_module(module, run_name="__main__", alter_sys=False)
    except SystemExit as stop:
        return _status(stop.code)
    except Exception:
        traceback.print_exc()
        return 1
    finally:
        sys.argv = saved_argv
        os.chdir(saved_cwd)
    return 0


def _status(code: object) -> int:
    """sys.exit's argument as the status a process would exit with."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


@contextmanager
def _environment(env: dict[str, str]) -> Iterator[None]:
    """`env` in os.environ while inside; what was there before, after."""
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextmanager
def _output_to(fd: int) -> Iterator[None]:
    """fd 1 and 2 (and so sys.stdout, sys.stderr and any child) write to `fd`."""
    saved = []
    for stream, target in ((sys.stdout, 1), (sys.stderr, 2)):
        stream.flush()
        saved.append(os.dup(target))
        os.dup2(fd, target)
    try:
        yield
    finally:
        for stream, target, old in ((sys.stdout, 1, saved[0]), (sys.stderr, 2, saved[1])):
            stream.flush()
            os.dup2(old, target)
            os.close(old)
