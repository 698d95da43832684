"""A live count on stderr, only when stderr is a terminal (logs stay clean).

When the size of the input is known up front (regular files: not stdin, `pipe:`
or a URL), the bar also shows how far the reading is, done/total in bytes of the
files as stored (a .gz by its compressed position), and the time left.

A run that is a task of `vecap launch` is told (PROGRESS_ENV, read at the CLI
edge) where to write its progress for the launch to read (`Report`): the same
counts and bytes, in a small JSON file, whatever stderr is.
"""

from __future__ import annotations

import os
import stat
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import BinaryIO

import orjson

from vecap_cli.errors import VecapError
from vecap_cli.stream.sinks import write_atomically

_STREAMS = ("-", "pipe:", "http://", "https://")

# Set by a launch's engine for each task: the file its run writes its progress to.
PROGRESS_ENV = "VECAP_LAUNCH_PROGRESS"


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


class Report:
    """This run's progress, written whole (a rename) to `path` at most once every
    INTERVAL seconds and at the end, for a launch to read (launch/progress.py):

        {"in": records read, "out": records written,
         "bytes_done": bytes read, "bytes_total": bytes to read (both null when
           the input's size is not known up front),
         "shares_records": whether this rank reads all the input and keeps every
           world_size-th record (else it reads whole inputs of its own),
         "done": the run ended well, "time": when written (seconds since the epoch)}

    The bytes are what this run reads: a rank that shares its inputs with the
    others reads them all, so its total is the whole input's size. A failed write
    is left for the next one: the file informs, the run's output is what counts.
    """

    INTERVAL = 1.0

    def __init__(self, path: str, meter: Meter | None, shares_records: bool):
        self.path, self.meter, self.shares_records = path, meter, shares_records
        self._last = float("-inf")

    def __call__(self, n_in: int, n_out: int) -> None:
        now = time.monotonic()
        if now - self._last >= self.INTERVAL:
            self._last = now
            self.write(n_in, n_out, done=False)

    def write(self, n_in: int, n_out: int, done: bool) -> None:

        meter = self.meter
        data = {
            "in": n_in,
            "out": n_out,
            "bytes_done": None if meter is None else meter.done(),
            "bytes_total": None if meter is None else meter.total,
            "shares_records": self.shares_records,
            "done": done,
            "time": round(time.time(), 3),
        }
        with suppress(VecapError):
            write_atomically(self.path, orjson.dumps(data))


@contextmanager
def progress(
    label: str, enabled: bool, meter: Meter | None = None, report: Report | None = None
) -> Iterator[Callable[[int, int], None] | None]:
    """Yields `update(n_in, n_out)`, or None unless enabled and stderr is a TTY,
    or a `report` is written (so a hot loop can skip the calls). With a `meter`,
    the bar shows bytes done/total and the time left; without, a spinner, the
    count and its speed."""
    if not shown(enabled):
        yield report
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
        if report is not None:
            report(n_in, n_out)
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
