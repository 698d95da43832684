"""Engines: where a launch's tasks run, each registered once, by name, where it is
defined (`@engine`); `vecap launch --engine` offers what ENGINES holds.

An engine is a frozen dataclass whose fields are its options: the `vecap launch`
flags of the same names (gpus_per_task: --gpus-per-task). A flag that no field
of the chosen engine takes is refused, so one engine's options never silently
do nothing under another.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from vecap_cli.stream.progress import PROGRESS_ENV

if TYPE_CHECKING:
    from vecap_cli.launch.state import Launch, State

Log = Callable[[str], None]


@dataclass(frozen=True)
class Run:
    """What a launch asks of an engine: run `tasks` of `launch` (all of them, or with
    `resume` those not done), or with `dry_run` write down how they would run.

    Task I runs `argv()` with `--rank I --world-size launch.tasks` in `launch.cwd`,
    with `environment(I)` added to its environment, and, only when that exits 0,
    writes its marker `state.done_dir`/I. When the step writes --stats or
    --rejects (`launch.step.merged`), `vecap launch --merge STATE` runs once
    every task has.
    """

    launch: Launch
    state: State
    tasks: tuple[int, ...]
    resume: bool
    dry_run: bool
    log: Log

    def argv(self) -> list[str]:
        """A task's command line, less its --rank and --world-size."""
        return self.launch.step.argv(self.resume)

    def environment(self, task: int) -> dict[str, str]:
        """What task `task` adds to its environment: where its run writes its progress
        (`vecap launch --watch` reads it)."""
        return {PROGRESS_ENV: self.state.progress_file(task)}


class Engine(ABC):
    help: ClassVar[str]  # its line in `vecap launch --help`

    @abstractmethod
    def start(self, run: Run) -> None:
        """Does what `run` asks, saying what through `run.log`."""


ENGINES: dict[str, type[Engine]] = {}


def engine(name: str, help: str) -> Callable[[type[Engine]], type[Engine]]:
    """Registers an Engine subclass as `vecap launch --engine name`."""

    def register(cls: type[Engine]) -> type[Engine]:
        cls.help = help
        ENGINES[name] = cls
        return cls

    return register


class EngineError(ValueError):
    """Options an engine cannot take; `str(err)` is the one line (a usage error)."""


def build(name: str, options: Mapping[str, object]) -> Engine:
    """The engine `name` with the `options` given (None and () stand for not given)."""
    cls = ENGINES[name]
    takes = {field.name for field in dataclasses.fields(cls)}  # type: ignore[arg-type]
    given = {option: value for option, value in options.items() if value not in (None, ())}
    for option in sorted(given.keys() - takes):
        raise EngineError(f"--{option.replace('_', '-')}: the {name} engine does not take it")
    return cls(**given)
