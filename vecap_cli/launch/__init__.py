"""`vecap launch`: one record command across a cluster, on a scheduler that exists.

A launch runs STEP as N tasks: task I runs `vecap STEP ARGS --rank I --world-size
N`, so the tasks split the input as ranks do, and each writes shards, --stats
and --rejects of its own. An engine decides where the tasks run; what they leave
behind (the state folder: the launch, a marker per task done, the logs) is the
same under every engine, so --resume, --merge and --watch do not depend on it.

    step.py      the command every task runs, checked before any starts
    state.py     the state folder
    engine.py    what an engine does, and the registry `vecap launch --engine` reads
    slurm.py     the slurm engine: a job array
    merge.py     the tasks' --stats added up into one
    rejects.py   the tasks' --rejects joined into one
    progress.py  the tasks' progress added up: `vecap launch --watch`, a driver's wait
"""

from __future__ import annotations

from vecap_cli.launch import slurm  # noqa: F401  (registers the engine)
from vecap_cli.launch.engine import Engine, Log, Run
from vecap_cli.launch.state import Launch, State


def start(
    launch: Launch, engine: Engine, state: State, *, resume: bool, dry_run: bool, log: Log
) -> None:
    """Record `launch` in `state`, then have `engine` run its tasks: all of them, or
    with `resume` those not done."""
    state.begin(launch, resume)
    pending = state.pending(launch.tasks)
    if not pending:
        merge = f" (to merge: vecap launch --merge {state.folder})" if launch.step.merged else ""
        log(f"all {launch.tasks} tasks are done: nothing to run{merge}")
        return
    engine.start(Run(launch, state, tuple(pending), resume, dry_run, log))
