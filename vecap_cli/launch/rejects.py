"""The tasks' --rejects as one file: where the tasks split records, the file one
process writes.

Each rejected line carries `idx`, its record's ordinal among those its run reads
(stream/picker.py), and a run writes its lines in that order. How ranks split
the input decides what can be rebuilt:

- fewer inputs than tasks: every task reads all of them and keeps every N-th
  record, so task r's record i is record i*N + r of one process. Each line's
  idx is renumbered so, and the tasks' lines are interleaved by it: the file one
  process writes, byte for byte (as long as the step rejects in input order,
  which every stage does; a line with no record, idx -1, stays after the line
  before it).
- as many inputs as tasks or more: task r reads inputs r, r+N, ... whole. One
  process's ordinal of a record needs the record counts of the inputs before
  it, which other tasks read and no task writes down; so the lines are joined in
  task order, each idx counting within its task (its `origin`, FILE:LINE or
  FILE:KEY, names the record either way).

Which split the tasks made, each says in its progress file (launch/progress.py);
without those (a launch begun before them), the lines are joined in task order.
"""

from __future__ import annotations

import contextlib
import heapq
import os
from collections.abc import Callable, Iterable, Iterator
from itertools import chain
from operator import itemgetter
from typing import BinaryIO

import orjson

from vecap_cli.errors import VecapError
from vecap_cli.launch.progress import read_report
from vecap_cli.launch.state import Launch, State
from vecap_cli.stream.runner import per_rank
from vecap_cli.stream.sinks import open_staging, staging_path, write_error

Log = Callable[[str], None]


def join_rejects(state: State, launch: Launch, rejects: str, log: Log) -> None:
    """Joins the tasks' rejects files (`rejects` per rank) into `rejects`, whose
    `{rank}` reads `all`."""
    tasks = launch.tasks
    paths = [per_rank(rejects, rank, tasks) for rank in range(tasks)]
    merged = rejects.format(rank="all") if "{rank}" in rejects else rejects
    if paths == [merged]:
        log(f"the rejects of the one task are in {merged}")
        return
    for path in paths:
        if not os.path.isfile(path):
            raise VecapError(f"'{path}' is missing: the task marked done wrote no --rejects")
    interleaved = _shares_records(state, tasks, log)
    with contextlib.ExitStack() as files:
        opened = [files.enter_context(open(path, "rb")) for path in paths]
        if interleaved:
            numbered = (
                _renumbered(f, rank, tasks, path)
                for rank, (f, path) in enumerate(zip(opened, paths, strict=True))
            )
            lines: Iterable[bytes] = map(itemgetter(1), heapq.merge(*numbered, key=itemgetter(0)))
        else:
            lines = chain.from_iterable(map(_whole_lines, opened))
        n = _write(merged, lines)
    order = "in one process's order" if interleaved else "in task order"
    log(f"joined the rejects of {tasks} tasks into {merged}: {n:,} lines, {order}")


def _shares_records(state: State, tasks: int, log: Log) -> bool:
    """Whether the tasks split records (each read every input), as their progress
    files say; False, with a note, when one says nothing."""
    reports = [read_report(state.progress_file(task)) for task in range(tasks)]
    silent = [task for task, report in enumerate(reports) if report is None]
    if silent:
        log(
            f"note: task {silent[0]} left no progress file saying how it split the input: "
            "the rejects are joined in task order"
        )
        return False
    return all(report.shares_records for report in reports)  # type: ignore[union-attr]


def _whole_lines(f: BinaryIO) -> Iterator[bytes]:
    for line in f:
        yield line if line.endswith(b"\n") else line + b"\n"


def _renumbered(f: BinaryIO, rank: int, world: int, name: str) -> Iterator[tuple[int, bytes]]:
    """(one process's idx, the line with that idx) of each line of task `rank`."""
    key = -1
    for line in _whole_lines(f):
        try:
            idx = orjson.loads(line)["idx"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            raise VecapError(f"'{name}' is not a vecap --rejects file") from None
        if type(idx) is not int:
            raise VecapError(f"'{name}' is not a vecap --rejects file: an idx is {idx!r}")
        if idx >= 0:
            key = idx * world + rank
            # The first `"idx":` is the key: reason, detail and origin come before
            # it, and in a JSON string every '"' is escaped.
            line = line.replace(b'"idx":%d' % idx, b'"idx":%d' % key, 1)
        yield key, line


def _write(path: str, lines: Iterable[bytes]) -> int:
    """Writes `lines` to `path` whole (PATH.tmp, renamed), or not at all; how many."""
    tmp = staging_path(path)
    out = open_staging(tmp, shown=path)
    n = 0
    try:
        for line in lines:
            out.write(line)
            n += 1
        out.flush()
        if tmp != path:
            os.replace(tmp, path)
    except OSError as err:
        _discard(out, tmp, path)
        raise write_error(path, err) from None
    except BaseException:
        _discard(out, tmp, path)
        raise
    out.close()
    return n


def _discard(out: BinaryIO, tmp: str, path: str) -> None:
    with contextlib.suppress(OSError):
        out.close()
    if tmp != path:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
