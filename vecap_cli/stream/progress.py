"""A live count on stderr, only when stderr is a terminal (logs stay clean)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager


@contextmanager
def progress(label: str, enabled: bool) -> Iterator[Callable[[int, int], None] | None]:
    """Yields `update(n_in, n_out)`, or None unless enabled and stderr is a TTY
    (so a hot loop can skip the calls)."""
    if not (enabled and sys.stderr.isatty()):
        yield None
        return
    from rich.console import Console
    from rich.progress import (
        Progress,
        SpinnerColumn,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    bar = Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        TextColumn("{task.completed:,} in · {task.fields[out]:,} out"),
        TaskProgressColumn(show_speed=True),  # records/s, as the total is unknown
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    )
    task = bar.add_task(label, total=None, out=0)
    last = [0.0]

    def update(n_in: int, n_out: int) -> None:
        now = time.monotonic()
        if now - last[0] > 0.1:  # rich's bookkeeping is not free: at most 10 updates/s
            last[0] = now
            bar.update(task, completed=n_in, out=n_out)

    with bar:
        yield update


def showing(samples: Iterable, tally, update: Callable[[int, int], None]) -> Iterator:
    """`samples` as they are, updating the count every 1024 of them (for a stage
    that reads far ahead of its output, or a pass that writes none)."""
    for n, sample in enumerate(samples):
        if not n & 1023:
            update(tally.n_in, tally.n_out)
        yield sample
