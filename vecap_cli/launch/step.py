"""The vecap command a launch runs in every task, checked before any task starts."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from vecap_cli.stream.sinks import OutputSpec

# What a task runs: this interpreter, so every node uses the install that launched.
VECAP = (sys.executable, "-m", "vecap_cli")

# The commands a launch runs: each splits its input by --rank/--world-size and
# writes a share of its own. True: records into a shard pattern (rank r numbers
# its shards r, r+N, ...), continued by --resume; False: one file per rank
# (curate count writes FILE.rankR.json), which a rerun writes again whole.
STEPS = {
    "curate run": True,
    "curate balance": True,
    "curate count": False,
    "filter score": True,  # --histogram, like --stats, is one file per rank
    "filter select": True,
    "caption": True,
    "rewrite": True,
    "embed": True,
    "mix": True,
}

# The step's flags that the launch sets in each task, and how the user asks for them.
_SET_BY_LAUNCH = {
    "rank": "each task gets its own",
    "world_size": "it is --tasks",
    "resume": "use vecap launch --resume",
}


class StepError(ValueError):
    """A step a launch cannot run; `str(err)` is the one line (a usage error)."""


@dataclass(frozen=True)
class Step:
    command: tuple[str, ...]  # ("curate", "balance")
    args: tuple[str, ...]  # the user's ARGS, as given
    output: str  # -o
    stats: str | None = None  # --stats, absolute: `vecap launch --merge` adds the tasks' up
    rejects: str | None = None  # --rejects, absolute: `vecap launch --merge` joins the tasks'

    @property
    def merged(self) -> bool:
        """Whether `vecap launch --merge` has anything to merge once every task is done."""
        return bool(self.stats or self.rejects)

    @property
    def name(self) -> str:
        return " ".join(self.command)

    @property
    def resumable(self) -> bool:
        return STEPS[self.name]

    def argv(self, resume: bool) -> list[str]:
        """A task's command line, less its --rank and --world-size."""
        again = ["--resume"] if resume and self.resumable else []
        return [*VECAP, *self.command, *self.args, *again]


def parse_step(command: Sequence[str], args: Sequence[str], params: Mapping[str, object]) -> Step:
    """The step `command` with `args`, whose flags its command line parsed into `params`
    (by name: inputs, output, stats, rank...); StepError when a launch cannot run it."""
    name = " ".join(command)
    if name not in STEPS:
        raise StepError(f"'{name}' cannot be launched: STEP is one of {', '.join(STEPS)}")
    for flag, why in _SET_BY_LAUNCH.items():
        value = params.get(flag)
        if value is not None and value is not False:  # --rank 0 is given too
            raise StepError(f"--{flag.replace('_', '-')}: vecap launch sets it ({why})")
    inputs = params.get("inputs") or ["-"]
    if "-" in inputs:  # type: ignore[operator]
        raise StepError("the tasks have no stdin: name the input files")
    output = str(params["output"])
    if STEPS[name] and not OutputSpec(output).sharded:
        raise StepError(
            f"-o '{output}': every task writes shards of its own: give a shard pattern, "
            "e.g. -o out/%06d.tar"
        )
    if output == "-":
        raise StepError(
            "-o: every task writes a file of its own: -o counts.json (counts.rankR.json)"
        )
    stats, rejects = (params.get(flag) for flag in ("stats", "rejects"))
    return Step(
        tuple(command),
        tuple(args),
        output,
        os.path.abspath(stats) if stats else None,
        os.path.abspath(rejects) if rejects else None,
    )
