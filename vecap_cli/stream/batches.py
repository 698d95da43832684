"""--workers: this rank's inputs cut into batches for worker processes (parallel.py).

JSONL is cut as its lines, whole, into runs of about BATCH_BYTES, parsed in the
workers; a tar as its samples, read here (a tar stream has no line to cut at).
Records are numbered here as one process numbers them: a batch of lines carries
the ordinal of its first record, and the worker's reader goes on from there.

A stage whose every record costs a model's answer (caption, rewrite) asks for
batches of at most `records` records: a few hundred records are then work for
every worker, not one batch for the first.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import count
from typing import BinaryIO, NamedTuple

from vecap_cli.stream.picker import Picker
from vecap_cli.stream.progress import Meter
from vecap_cli.stream.sample import Sample, Source
from vecap_cli.stream.sources import open_each
from vecap_cli.stream.tally import Part, Tally
from vecap_cli.stream.tar import read_tar

BATCH_BYTES = 1 << 20  # JSONL lines (whole), or tar samples, per batch
BATCH_SAMPLES = 1024  # tar samples per batch, at most


@dataclass
class Inputs:
    """This rank's inputs, as one process reads them."""

    names: list[str]
    pick: Picker
    carriers: list[str]  # the carrier of each input opened so far
    log: Callable[[str], None]
    stdin: BinaryIO | None = None
    meter: Meter | None = None  # how far the reading is, for the bar (None: not shown)


@dataclass(kw_only=True)
class Job:
    seq: int = 0  # the batch's place in the run
    fmt: str = ""  # the output's format ('jsonl' | 'tar'), for a stage's outputs
    marked: bool = False  # the sink wants each output's input and end (it cuts shards)


@dataclass(kw_only=True)
class Lines(Job):
    """Whole JSONL lines (the batch's data, as read), parsed by the worker;
    `first_ordinal`: the picker's ordinal of the first record."""

    source: Source
    first_line: int
    first_ordinal: int


@dataclass(kw_only=True)
class Samples(Job):
    samples: list[Sample] = field(default_factory=list)


class Batch(NamedTuple):
    job: Job
    data: bytes | None  # JSONL lines: they go through memory shared with the worker
    lead: Part | None  # what reading it here counted, merged before the worker's count


def batches(inputs: Inputs, reading: Tally, records: int | None = None) -> Iterator[Batch]:
    """The inputs cut into batches, in order (tar is read here, JSONL by the workers);
    `records`: the most a batch holds (lines, for JSONL), beyond the size caps."""
    seq = count()
    with _stdin_apart(inputs) as stdin:
        for source, stream in open_each(
            inputs.names, inputs.carriers, inputs.log, stdin, inputs.meter
        ):
            if source.carrier == "jsonl":
                cut = _lines(stream, source, inputs.pick, records)
            else:
                tar = read_tar(stream, source, reading, inputs.pick)
                cut = _samples(tar, reading, min(records or BATCH_SAMPLES, BATCH_SAMPLES))
            for batch in cut:
                batch.job.seq = next(seq)
                yield batch


@contextmanager
def _stdin_apart(inputs: Inputs) -> Iterator[BinaryIO | None]:
    """What '-' reads: a file of its own on fd 0, not sys.stdin. Batches are cut on
    a thread of their own (pool.py), which may be waiting in a read of stdin when
    Ctrl-C ends the run; reading sys.stdin, it would hold the lock that Python takes
    to close sys.stdin at exit, and the exit would abort."""
    try:
        fd = sys.stdin.fileno() if inputs.stdin is None and "-" in inputs.names else None
    except (AttributeError, OSError, ValueError):  # not a file (a library caller's stand-in)
        fd = None
    if fd is None:
        yield inputs.stdin
        return
    with os.fdopen(os.dup(fd), "rb") as own:
        yield own


def _lines(stream: BinaryIO, source: Source, pick: Picker, records: int | None) -> Iterator[Batch]:
    first_line = 1
    for whole in _whole_lines(stream):
        for data in _cut(whole, records) if records else (whole,):
            first = pick.ordinal + 1
            lines = data.split(b"\n")
            if data.endswith(b"\n"):
                lines.pop()  # the nothing after the last newline
            blank = lines.count(b"") + sum(map(bytes.isspace, lines))  # no record: not numbered
            pick.ordinal += len(lines) - blank
            if pick.ordinal // pick.world >= pick.skip:  # else --resume skips all of them
                job = Lines(source=source, first_line=first_line, first_ordinal=first)
                yield Batch(job, data, None)
            first_line += len(lines)


def _cut(data: bytes, records: int) -> Iterator[bytes]:
    """`data` (whole lines) in runs of at most `records` lines, as slices of it."""
    start, size = 0, len(data)
    while start < size:
        end = start
        for _ in range(records):
            newline = data.find(b"\n", end)
            end = size if newline < 0 else newline + 1
            if end == size:
                break
        yield data[start:end]
        start = end


def _whole_lines(stream: BinaryIO) -> Iterator[bytes]:
    """The stream in runs of whole lines, of BATCH_BYTES and the rest of the last
    line (the last run may lack its newline)."""
    while data := stream.read(BATCH_BYTES):
        if not data.endswith(b"\n"):
            data += stream.readline()
        yield data


def _samples(samples: Iterator[Sample], reading: Tally, most: int) -> Iterator[Batch]:
    """Batches of tar samples read here, each led by what reading counted since the
    batch before. A batch ends before a sample on whose way records were rejected,
    so that their lines are merged where one process writes them: between batches."""
    batch: list[Sample] = []
    size = 0
    lead = None
    for sample in samples:
        if batch and (reading.rejected or size >= BATCH_BYTES or len(batch) >= most):
            yield Batch(Samples(samples=batch), None, lead)
            batch, size = [], 0
        if not batch:
            lead = reading.detach()
        batch.append(sample)
        size += sum(map(len, sample.members.values()))
    if batch:
        yield Batch(Samples(samples=batch), None, lead)
    tail = reading.detach()
    if tail.n_in or tail.rejected:  # a reader counts inputs and rejections, nothing else
        yield Batch(Samples(), None, tail)
