"""The slurm engine: a launch's tasks as one Slurm job array, submitted with sbatch.

Nothing of ours schedules. `STATE/tasks.sbatch` is an ordinary array script (read
it, or submit it by hand) whose task I runs the step as rank I, writing its
progress to STATE/progress/I.json, then marks itself done; with --stats or
--rejects, `STATE/merge.sbatch` runs `vecap launch --merge` after the array
(--dependency=afterok), and is cancelled when a task fails. Every
argument enters the scripts through shlex.quote; every value of an #SBATCH line
is checked to be one word, as sbatch reads those lines without a shell.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, fields

from vecap_cli.errors import VecapError
from vecap_cli.launch.engine import Engine, EngineError, Run, engine
from vecap_cli.launch.merge import merge_argv
from vecap_cli.launch.state import Launch, State, task_ranges
from vecap_cli.stream.progress import PROGRESS_ENV
from vecap_cli.stream.sinks import write_atomically

SBATCH_TIMEOUT = 60  # seconds: a busy controller answers slowly, a dead one never
_WORD = re.compile(r"[^\s'\"\\]+")
_OWN = ("--array", "-a", "--output", "-o")  # directives a launch writes itself


@engine("slurm", help="a Slurm job array, submitted with sbatch")
@dataclass(frozen=True)
class Slurm(Engine):
    # Each field but `sbatch` is the sbatch option of the same name, dashed.
    partition: str | None = None
    gpus_per_task: int | None = None
    cpus_per_task: int | None = None
    time: str | None = None
    mem: str | None = None
    sbatch: tuple[str, ...] = ()  # more #SBATCH lines: "--account=proj"

    def __post_init__(self) -> None:
        for option, value in self._resources():
            if not _WORD.fullmatch(str(value)):
                raise EngineError(f"--{option} '{value}': one word, as an #SBATCH line takes it")
        for line in self.sbatch:
            if "\n" in line or "\r" in line:
                raise EngineError(f"--sbatch {line!r}: one #SBATCH line, with no newline")
            if not line.startswith("-"):
                raise EngineError(f"--sbatch '{line}': an sbatch option, e.g. --sbatch=--qos=low")
            option = line.split("=")[0].split()[0]
            if option in _OWN:
                raise EngineError(f"--sbatch '{line}': vecap launch writes {option} itself")

    def _resources(self) -> list[tuple[str, object]]:
        return [
            (field.name.replace("_", "-"), value)
            for field in fields(self)
            if field.name != "sbatch" and (value := getattr(self, field.name)) is not None
        ]

    def start(self, run: Run) -> None:
        launch, state = run.launch, run.state
        script = state.path("tasks.sbatch")
        write_atomically(script, self._tasks_script(run).encode())
        merge = state.path("merge.sbatch") if launch.step.merged else None
        if merge:
            write_atomically(merge, self._merge_script(launch, state).encode())
        what = f"tasks {task_ranges(run.tasks)} of {launch.tasks} ({launch.step.name})"
        if run.dry_run:
            print(_commands(script, merge))
            run.log(f"wrote {script}: {what}; not submitted (--dry-run)")
            return
        job = _submit([script])
        run.log(f"submitted job {job}: {what}; logs in {state.logs_dir}")
        run.log(f"to watch it: vecap launch --watch {shlex.quote(state.folder)}")
        if merge:
            try:
                merging = _submit([f"--dependency=afterok:{job}", merge])
            except VecapError as err:
                raise VecapError(
                    f"{err} (the merge job); the tasks run as job {job}: "
                    f"run vecap launch --merge {shlex.quote(state.folder)} when they are done"
                ) from None
            run.log(f"submitted job {merging}: merges {_merged(launch)} once every task is done")

    def _tasks_script(self, run: Run) -> str:
        launch, state, step = run.launch, run.state, run.launch.step
        header = _header(
            f"vecap launch: {step.name} as {launch.tasks} tasks; task I runs rank I.",
            [
                f"--job-name=vecap-{'-'.join(step.command)}",
                f"--array={task_ranges(run.tasks)}",
                "--ntasks=1",  # one process per array task (--gpus-per-task needs a count)
                f"--output={_log_path(state, 'task-%a.log')}",
                *(f"--{option}={value}" for option, value in self._resources()),
                *self.sbatch,
            ],
        )
        command = f'{shlex.join(run.argv())} --rank "$task" --world-size {launch.tasks}'
        progress = f'{shlex.quote(state.progress_dir)}/"$task".json'  # run.environment(task)
        return f"""{header}
set -euo pipefail
task=${{SLURM_ARRAY_TASK_ID:?not a Slurm array task}}
cd {shlex.quote(launch.cwd)}
export {PROGRESS_ENV}={progress}
{command}
# Marked done only now, and whole (a rename): a task killed before has no marker.
marker={shlex.quote(state.done_dir)}/$task
printf '%s\\n' "${{SLURM_ARRAY_JOB_ID:-}}" > "$marker.tmp"
mv -f "$marker.tmp" "$marker"
"""

    def _merge_script(self, launch: Launch, state: State) -> str:
        partition = [f"--partition={self.partition}"] if self.partition else []
        header = _header(
            f"vecap launch: merges the tasks' {_merged(launch)} once every task exited 0.",
            [
                f"--job-name=vecap-{'-'.join(launch.step.command)}-merge",
                "--ntasks=1",
                f"--output={_log_path(state, 'merge.log')}",
                "--kill-on-invalid-dep=yes",  # a task failed: cancelled, not pending for ever
                *partition,
                *self.sbatch,
            ],
        )
        return f"{header}\nset -euo pipefail\nexec {shlex.join(merge_argv(state))}\n"


def _merged(launch: Launch) -> str:
    step = launch.step
    return " and ".join(
        name for name, path in (("--stats", step.stats), ("--rejects", step.rejects)) if path
    )


def _header(what: str, directives: Iterable[str]) -> str:
    # A log is appended to, so a task run again keeps its earlier attempts' lines.
    lines = ["--open-mode=append", *directives]
    return "\n".join(["#!/bin/bash", f"# {what}", *(f"#SBATCH {line}" for line in lines)])


def _log_path(state: State, name: str) -> str:
    """The #SBATCH --output of log `name` (which may hold %a): a '%' of the folder
    doubled, since Slurm reads those as its own."""
    if not _WORD.fullmatch(state.logs_dir):
        raise VecapError(
            f"--state '{state.folder}': Slurm's log paths (#SBATCH --output) cannot hold "
            "spaces, quotes or backslashes: give another --state"
        )
    return f"{state.logs_dir.replace('%', '%%')}/{name}"


def _commands(script: str, merge: str | None) -> str:
    """The sbatch commands `start` runs, as a shell runs them (what --dry-run prints)."""
    submit = shlex.join(["sbatch", "--parsable", script])
    if merge is None:
        return submit
    after = f'sbatch --parsable --dependency=afterok:"${{job%%;*}}" {shlex.quote(merge)}'
    return f"job=$({submit})\n{after}"


def _submit(args: list[str]) -> str:
    """`sbatch --parsable ARGS`; the job id it prints, or one line on why not."""
    try:
        done = subprocess.run(
            ["sbatch", "--parsable", *args], capture_output=True, text=True, timeout=SBATCH_TIMEOUT
        )
    except FileNotFoundError:
        raise VecapError(
            "sbatch not found: submit from a Slurm login node, or write the scripts with --dry-run"
        ) from None
    except subprocess.TimeoutExpired:
        raise VecapError(f"sbatch did not answer in {SBATCH_TIMEOUT} s") from None
    if done.returncode != 0:
        said = done.stderr.strip().splitlines()  # the error comes last, after any warning
        raise VecapError(
            f"sbatch refused the job: {said[-1] if said else f'status {done.returncode}'}"
        )
    said = done.stdout.strip()
    job = said.split(";")[0]  # --parsable: JOBID or JOBID;CLUSTER
    if not job.isdigit():
        raise VecapError(f"sbatch answered '{said}', not a job id")
    return job
