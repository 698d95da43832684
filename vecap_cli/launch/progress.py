"""How far a launch has got: its tasks' progress files and done markers, added up
for `vecap launch --watch` and for an engine's driver that waits on its tasks.

Each task's run writes STATE/progress/I.json (stream/progress.py's Report) about
once a second and at its end; a task is done when its marker is there. The file
comes from our own tasks but is read as data: one that is missing, half written
or damaged is no news from that task this tick (its last good reading stands),
never an error.

The unit of work is a task, as tasks split the input evenly (every N-th record,
or every N-th input): a done task counts 1, a running one the share of its input
it has read (0 when its size is unknown), so the bar and its ETA hold whatever
the inputs are. Bytes are shown as the tasks read them: a task that shares its
inputs with the others (fewer inputs than tasks: it reads all, keeps every N-th
record) reads the whole input, so 3 such tasks over 1 GB read 3 GB in all.

    with Watch(state, launch) as watch:   # a rich bar while inside, on a terminal
        while not watch.update().finished:
            time.sleep(1)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import orjson

from vecap_cli.launch.state import Launch, State

Log = Callable[[str], None]


@dataclass(frozen=True)
class Report:
    """One task's progress file, as read (see stream/progress.py's Report)."""

    n_in: int
    n_out: int
    bytes_done: int | None
    bytes_total: int | None
    shares_records: bool
    done: bool

    @property
    def share(self) -> float:
        """How much of its input the task has read: 0 to 1 (0 when not known)."""
        if self.done:
            return 1.0
        if not self.bytes_total or self.bytes_done is None:
            return 0.0
        return min(1.0, self.bytes_done / self.bytes_total)


def read_report(path: str) -> Report | None:
    """The progress file at `path`, or None when it is missing or not one whole."""
    try:
        with open(path, "rb") as f:
            data = orjson.loads(f.read(1 << 16))
        fields = (data["in"], data["out"], data["bytes_done"], data["bytes_total"])
        shares, done = data["shares_records"], data["done"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    counts_ok = all(_count(v) for v in fields[:2]) and all(
        v is None or _count(v) for v in fields[2:]
    )
    if not counts_ok or not isinstance(shares, bool) or not isinstance(done, bool):
        return None
    return Report(*fields, shares, done)


def _count(value: object) -> bool:
    return type(value) is int and value >= 0


@dataclass(frozen=True)
class Snapshot:
    """The launch as a whole, at one tick."""

    tasks: int
    done: int  # tasks marked done
    running: int  # tasks not done that have reported
    n_in: int
    n_out: int
    bytes_done: int
    bytes_total: int | None  # None until every task has reported its input's size
    work: float  # tasks' worth done: 1 a done task, a running one its share read

    @property
    def finished(self) -> bool:
        return self.done == self.tasks

    def line(self) -> str:
        """`2/3 tasks done (1 running) · 1,234 in · 1,200 out · 3.1 MB of 4.5 MB read`"""
        running = f" ({self.running} running)" if self.running else ""
        read = ""
        if self.bytes_total is not None:
            read = f" · {_size(self.bytes_done)} of {_size(self.bytes_total)} read"
        elif self.bytes_done:
            read = f" · {_size(self.bytes_done)} read"
        return (
            f"{self.done}/{self.tasks} tasks done{running} · "
            f"{self.n_in:,} in · {self.n_out:,} out{read}"
        )


def _size(n: int) -> str:
    for unit in ("bytes", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:,} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000  # type: ignore[assignment]
    raise AssertionError  # unreachable


class Watch:
    """A launch's progress, read afresh at each `update()`. As a context manager it
    shows one rich bar on stderr while inside when `bar` (pass stream.progress.shown
    of it: a terminal); else, with `log`, a line at the first tick, then every
    `every` seconds when something changed."""

    def __init__(
        self,
        state: State,
        launch: Launch,
        *,
        bar: bool = False,
        log: Log | None = None,
        every: float = 60.0,
    ):
        self.state, self.launch = state, launch
        self.reports: dict[int, Report] = {}  # each task's last good reading
        self._bar, self._log, self._every = bar, log, every
        self._progress = None
        self._said: tuple[float, str] = (float("-inf"), "")  # the first tick says a line

    def read(self) -> Snapshot:
        """The launch now: the markers, and each task's progress file (a damaged one
        leaves the task's last good reading in place)."""
        tasks = self.launch.tasks
        pending = set(self.state.pending(tasks))
        for task in range(tasks):
            report = read_report(self.state.progress_file(task))
            if report is not None:
                self.reports[task] = report
        reports = self.reports
        known = [r.bytes_total for r in reports.values() if r.bytes_total is not None]
        return Snapshot(
            tasks=tasks,
            done=tasks - len(pending),
            running=sum(1 for task in reports if task in pending),
            n_in=sum(r.n_in for r in reports.values()),
            n_out=sum(r.n_out for r in reports.values()),
            bytes_done=sum(r.bytes_done or 0 for r in reports.values()),
            bytes_total=sum(known) if len(known) == tasks else None,
            work=sum(1.0 if task not in pending else r.share for task, r in reports.items())
            + sum(1 for task in range(tasks) if task not in pending and task not in reports),
        )

    def update(self) -> Snapshot:
        """Read the launch, redraw the bar (or say a line, now and then); the snapshot."""
        snapshot = self.read()
        if self._progress is not None:
            bar, task = self._progress
            bar.update(task, completed=snapshot.work, line=snapshot.line())
        elif self._log is not None:
            now, line = time.monotonic(), snapshot.line()
            if now - self._said[0] >= self._every and line != self._said[1]:
                self._log(line)
                self._said = (now, line)
        return snapshot

    def __enter__(self) -> Watch:
        if self._bar:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                Progress,
                SpinnerColumn,
                TextColumn,
                TimeRemainingColumn,
            )

            bar = Progress(
                SpinnerColumn(),
                TextColumn("[bold]launch"),
                BarColumn(bar_width=20),
                TextColumn("{task.fields[line]}"),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=True,
            )
            bar.start()
            task = bar.add_task("launch", total=self.launch.tasks, line="")
            self._progress = (bar, task)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress[0].stop()
            self._progress = None


def watch(state: State, launch: Launch, *, bar: bool, log: Log, interval: float = 1.0) -> Snapshot:
    """Shows the launch until every task is done; its last snapshot, said in one line."""
    with Watch(state, launch, bar=bar, log=log) as watching:
        while not (snapshot := watching.update()).finished:
            time.sleep(interval)
    log(snapshot.line())
    return snapshot
