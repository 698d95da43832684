"""A launch's state folder: what was launched, which tasks are done, their logs.

    STATE/launch.json   the launch: step, ARGS, task count, working folder
    STATE/done/I        task I's step exited 0; written last, by a rename, so a
                        task killed at any point before it has none
    STATE/logs/         the tasks' output
    STATE/progress/I.json  task I's progress, written by its run (stream/progress.py's
                        Report) for `vecap launch --watch` to read (launch/progress.py)
    STATE/...           the engine's own files (slurm: tasks.sbatch, merge.sbatch)

It lives on the filesystem the tasks write their output to (by default beside
the output), since every task writes its marker there. A marker's content is
informative only (the job that wrote it): its name is what counts.
"""

from __future__ import annotations

import os
import shlex
import shutil
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import orjson

from vecap_cli.errors import VecapError
from vecap_cli.launch.step import Step
from vecap_cli.stream.sinks import write_atomically


@dataclass(frozen=True)
class Launch:
    step: Step
    tasks: int
    cwd: str  # where the step's relative paths resolve, in every task

    def difference(self, other: Launch) -> str | None:
        """What makes `other` another launch than this one, as "what: X there, Y now"; or None."""
        for what, mine, theirs in (
            ("step", self.step.name, other.step.name),
            ("tasks", self.tasks, other.tasks),
            ("working folder", self.cwd, other.cwd),
            ("ARGS", shlex.join(self.step.args), shlex.join(other.step.args)),
        ):
            if mine != theirs:
                return f"{what}: {mine} there, {theirs} now"
        return None


class State:
    def __init__(self, folder: str):
        self.folder = os.path.abspath(folder)
        self.done_dir = os.path.join(self.folder, "done")
        self.logs_dir = os.path.join(self.folder, "logs")
        self.progress_dir = os.path.join(self.folder, "progress")
        self._launch_file = os.path.join(self.folder, "launch.json")

    def path(self, name: str) -> str:
        return os.path.join(self.folder, name)

    def read(self) -> Launch | None:
        """The launch recorded here, or None when there is none."""
        try:
            with open(self._launch_file, "rb") as f:
                data = orjson.loads(f.read())
            step = {k: tuple(v) if isinstance(v, list) else v for k, v in data["step"].items()}
            return Launch(Step(**step), data["tasks"], data["cwd"])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError):
            raise VecapError(
                f"'{self._launch_file}' is damaged (not a vecap launch): remove '{self.folder}'"
            ) from None

    def begin(self, launch: Launch, resume: bool) -> None:
        """Record `launch` here; a fresh one (not `resume`) forgets which tasks were done.
        Refuses a folder that holds another launch."""
        previous = self.read()
        difference = previous and previous.difference(launch)
        if difference and resume:
            raise VecapError(
                f"cannot resume: '{self.folder}' holds another launch ({difference}): "
                "resume it with its own STEP ARGS, or give another --state"
            )
        if difference:
            raise VecapError(
                f"'{self.folder}' holds another launch ({difference}): "
                "give another --state, or remove it first"
            )
        if not resume:
            shutil.rmtree(self.done_dir, ignore_errors=True)
            shutil.rmtree(self.progress_dir, ignore_errors=True)
        for folder in (self.done_dir, self.logs_dir, self.progress_dir):
            os.makedirs(folder, exist_ok=True)
        write_atomically(
            self._launch_file, orjson.dumps(asdict(launch), option=orjson.OPT_INDENT_2)
        )

    def progress_file(self, task: int) -> str:
        """Where task `task`'s run writes its progress (the engine tells it so)."""
        return os.path.join(self.progress_dir, f"{task}.json")

    def pending(self, tasks: int) -> list[int]:
        """The tasks below `tasks` that have no marker."""
        try:
            names = os.listdir(self.done_dir)
        except FileNotFoundError:
            names = []
        done = {int(name) for name in names if name.isascii() and name.isdigit()}
        return [task for task in range(tasks) if task not in done]


def default_folder(step: Step) -> str:
    """`.vecap-launch` in the folder of the step's -o: on the filesystem the tasks write."""
    return os.path.join(os.path.dirname(step.output) or ".", ".vecap-launch")


def task_ranges(tasks: Iterable[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> '0-2,5,7-8' (Slurm's --array syntax, and short to read)."""
    parts: list[list[int]] = []
    for task in sorted(tasks):
        if parts and task == parts[-1][1] + 1:
            parts[-1][1] = task
        else:
            parts.append([task, task])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in parts)
