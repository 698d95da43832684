"""The tasks' --stats as one file, in the layout of one process's --stats; and
their --rejects as one file (rejects.py).

in, out and the dropped, rejected and added counts add up, and so do a step's
own counts (a number, or a dict of numbers such as mix's `chosen`). Any other
entry describes the whole run (curate's `curate` summary, which every rank
computes over the whole pool): kept when every task wrote the same, else left
out with a note. `seconds` is the slowest task's. Each task's counts must
balance (in + added = out + dropped + rejected), so their sum does.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import orjson

from vecap_cli.errors import VecapError
from vecap_cli.launch.rejects import join_rejects
from vecap_cli.launch.state import Launch, State, task_ranges
from vecap_cli.launch.step import VECAP
from vecap_cli.stream.runner import per_rank, write_stats
from vecap_cli.stream.tally import Tally

Log = Callable[[str], None]

_KINDS = ("dropped", "rejected", "added")
_OWN = ("command", "in", "out", *_KINDS, "balanced", "seconds")  # Tally.as_dict's own entries


def merge_argv(state: State) -> list[str]:
    """The command line that merges the stats of the launch in `state`."""
    return [*VECAP, "launch", "--merge", state.folder]


def merge(state: State, log: Log) -> Tally | None:
    """Adds up the tasks' --stats of the launch in `state` into the step's --stats
    name (`{rank}` in it reads `all`), and joins their --rejects into the step's
    --rejects name alike; refuses while a task is not done. The merged stats, if any."""
    launch = state.read()
    if launch is None:
        raise VecapError(f"'{state.folder}' holds no launch")
    pending = state.pending(launch.tasks)
    if pending:
        raise VecapError(
            f"tasks {task_ranges(pending)} of {launch.tasks} are not done "
            "(vecap launch --resume runs them)"
        )
    if not launch.step.merged:
        raise VecapError(
            f"nothing to merge: the launch in '{state.folder}' wrote no --stats or --rejects"
        )
    tally = _merge_stats(launch, launch.step.stats, log) if launch.step.stats else None
    if launch.step.rejects:
        join_rejects(state, launch, launch.step.rejects, log)
    return tally


def _merge_stats(launch: Launch, stats: str, log: Log) -> Tally:
    paths = [per_rank(stats, rank, launch.tasks) for rank in range(launch.tasks)]
    tally = add_up([_read(path) for path in paths], paths, log)
    merged = stats.format(rank="all") if "{rank}" in stats else stats
    write_stats(merged, tally)
    log(f"merged the stats of {launch.tasks} tasks into {merged}: {tally.summary()}")
    return tally


def add_up(stats: Sequence[dict], names: Sequence[str], log: Log) -> Tally:
    """One tally of the --stats `stats` (read from `names`, which errors name)."""
    for one, name in zip(stats, names, strict=True):
        _check(one, name)
    commands = sorted({one["command"] for one in stats})
    if len(commands) > 1:
        raise VecapError(f"the tasks' stats are of different commands: {', '.join(commands)}")
    tally = Tally(commands[0])
    for one in stats:
        tally.n_in += one["in"]
        tally.n_out += one["out"]
        for kind in _KINDS:
            getattr(tally, kind).update(one[kind])
    _add_step_entries(tally, stats, log)
    tally.started = time.monotonic() - max(one["seconds"] for one in stats)
    return tally


def _add_step_entries(tally: Tally, stats: Sequence[dict], log: Log) -> None:
    names = dict.fromkeys(name for one in stats for name in one if name not in _OWN)
    for name in names:
        values = [one[name] for one in stats if name in one]
        if all(map(_is_number, values)):
            tally.declare(name)
            for value in values:
                tally.count(name, None, value)
        elif all(map(_is_counts, values)):
            tally.declare(name, keyed=True)
            for value in values:
                for key, n in value.items():
                    tally.count(name, None, n, key=key)
        elif len(values) == len(stats) and all(value == values[0] for value in values):
            tally.extra[name] = values[0]
        else:
            log(f"note: '{name}' differs between the tasks' stats: left out of the merge")


def _check(stats: object, name: str) -> None:
    """One line unless `stats` is a --stats file whose counts balance."""
    if not (
        isinstance(stats, dict)
        and isinstance(stats.get("command"), str)
        and all(_is_number(stats.get(key)) for key in ("in", "out", "seconds"))
        and all(_is_counts(stats.get(kind)) for kind in _KINDS)
    ):
        raise VecapError(f"'{name}' is not a vecap --stats file")
    dropped, rejected, added = (sum(stats[kind].values()) for kind in _KINDS)
    if stats["in"] + added != stats["out"] + dropped + rejected:
        raise VecapError(f"'{name}' does not balance: in + added != out + dropped + rejected")


def _read(path: str) -> object:
    try:
        with open(path, "rb") as f:
            return orjson.loads(f.read())
    except FileNotFoundError:
        raise VecapError(f"'{path}' is missing: the task marked done wrote no --stats") from None
    except orjson.JSONDecodeError:
        raise VecapError(f"'{path}' is not a vecap --stats file") from None


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_counts(value: object) -> bool:
    return isinstance(value, dict) and all(map(_is_number, value.values()))
