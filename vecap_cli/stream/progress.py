"""A live count on stderr, only when stderr is a terminal (logs stay clean).

When the size of the input is known up front (regular files: not stdin, `pipe:`
or a URL), the bar also shows how far the reading is, done/total in bytes of the
files as stored (a .gz by its compressed position), and the time left.
"""

from __future__ import annotations

import os
import stat
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import BinaryIO

_STREAMS = ("-", "pipe:", "http://", "https://")


class Meter:
    """How far the reading is through a list of input files, in bytes as stored.

    `sizes`: each input's size, in the order they are read. The reader calls
    `reading(index, raw)` when it opens input `index` (`raw`: the file as opened,
    before any gunzip, so its position counts compressed bytes). `done()` asks the
    file its position: a call to the OS, made only when the bar is redrawn.
    """

    def __init__(self, sizes: Sequence[int]):
        self.sizes = list(sizes)
        self.total = sum(self.sizes)
        self._before = 0  # bytes of the inputs before the one being read
        self._size = 0  # and of that one
        self._raw: BinaryIO | None = None
        self._done = 0

    def reading(self, index: int, raw: BinaryIO) -> None:
        self._before, self._size = sum(self.sizes[:index]), self.sizes[index]
        self._raw = raw

    def done(self) -> int:
        """Bytes read so far; never less than before (a file that shrank) nor more
        than the total (one that grew)."""
        raw = self._raw
        try:
            at = raw.tell() if raw is not None else 0
        except ValueError:  # closed: read to its end (the run may go on without reading)
            at = self._size
        except OSError:
            at = 0
        self._done = max(self._done, min(self.total, self._before + at))
        return self._done


def measure(names: Sequence[str]) -> Meter | None:
    """A meter over `names`, or None when their size is not known up front: any of
    them stdin, a `pipe:`, a URL or not a regular file; or all of them empty."""
    sizes = []
    for name in names:
        if name.startswith(_STREAMS):
            return None
        try:
            info = os.stat(name)
        except OSError:  # it is reported, in one line, when the run opens it
            return None
        if not stat.S_ISREG(info.st_mode):
            return None
        sizes.append(info.st_size)
    return Meter(sizes) if sum(sizes) else None


def shown(enabled: bool) -> bool:
    """Whether a bar would show: asked, and stderr a terminal."""
    return enabled and sys.stderr.isatty()


@contextmanager
def progress(
    label: str, enabled: bool, meter: Meter | None = None
) -> Iterator[Callable[[int, int], None] | None]:
    """Yields `update(n_in, n_out)`, or None unless enabled and stderr is a TTY
    (so a hot loop can skip the calls). With a `meter`, the bar shows bytes
    done/total and the time left; without, a spinner, the count and its speed."""
    if not shown(enabled):
        yield None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        SpinnerColumn,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    counts = TextColumn("{task.fields[n_in]:,} in · {task.fields[out]:,} out")
    if meter is None:
        # records/s, as the total is unknown
        columns = (counts, TaskProgressColumn(show_speed=True), TimeElapsedColumn())
    else:
        columns = (
            BarColumn(bar_width=20),
            counts,
            DownloadColumn(),  # bytes read / bytes in all
            TextColumn("ETA"),
            TimeRemainingColumn(),
        )
    bar = Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        *columns,
        console=Console(stderr=True),
        transient=True,
    )
    task = bar.add_task(label, total=None if meter is None else meter.total, n_in=0, out=0)
    last, latest = [0.0], [0, 0]

    def draw(n_in: int, n_out: int) -> None:
        done = n_in if meter is None else meter.done()
        bar.update(task, completed=done, n_in=n_in, out=n_out)

    def update(n_in: int, n_out: int) -> None:
        latest[:] = n_in, n_out
        now = time.monotonic()
        if now - last[0] > 0.1:  # rich's bookkeeping is not free: at most 10 updates/s
            last[0] = now
            draw(n_in, n_out)

    with bar:
        yield update
        draw(*latest)  # the last frame shows where the run got to, however fast it went


def showing(samples: Iterable, tally, update: Callable[[int, int], None]) -> Iterator:
    """`samples` as they are, updating the count every 1024 of them (for a stage
    that reads far ahead of its output, or a pass that writes none)."""
    for n, sample in enumerate(samples):
        if not n & 1023:
            update(tally.n_in, tally.n_out)
        yield sample
