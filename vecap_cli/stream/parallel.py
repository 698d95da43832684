"""--workers: a run's records in batches over worker processes (pool.py), written here.

This process reads the inputs and cuts them into batches: JSONL as its lines,
parsed in the workers; a tar as its samples, read here (a tar stream has no
line to cut at). A worker counts its batch in a tally of its own
(`Tally.apart`), runs the step over it and answers; for a stage, the answer is
its outputs, encoded for the output's format. This process merges the tallies
and writes the outputs batch after batch, in input order: the output, the
counts, --rejects and the shards --resume goes on from are one process's.

Records are numbered here as one process numbers them: a batch of lines carries
the ordinal of its first, and the worker's reader goes on from there.

One case keeps an order of its own: rejected lines of a stage that reads ahead
(curate matches 1,024 records at a time) come batch by batch; they are the same
lines, and in the same order unless a writer rejects records too (tar output
with missing images).
"""

from __future__ import annotations

import gc
import os
from array import array
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import count
from typing import TYPE_CHECKING, Any, BinaryIO

import orjson

from vecap_cli.stream.images import ImageLimits
from vecap_cli.stream.jsonl import read_jsonl
from vecap_cli.stream.picker import Picker
from vecap_cli.stream.sample import Sample, Source
from vecap_cli.stream.sinks import Encoded, Sink
from vecap_cli.stream.sources import open_each
from vecap_cli.stream.tally import Part, Tally
from vecap_cli.stream.tar import read_tar, tar_blocks

if TYPE_CHECKING:
    from vecap_cli.stream.pool import Pool

Stage = Callable[[Iterable[Sample], Tally], Iterator[Sample]]
Update = Callable[[int, int], None] | None

BATCH_BYTES = 1 << 20  # JSONL lines (whole), or tar samples, per batch
BATCH_SAMPLES = 1024  # tar samples per batch, at most


class Gathering:
    """A stage that sees every record before it writes any (curate's one-pass:
    count all, then balance). One process runs it as any stage, the whole input
    as one batch. With --workers, each worker `gather`s the batches it is given
    and keeps what it held; this process `settle`s what they found, once; then
    each worker `release`s the batches it holds, in input order."""

    def gather(self, samples: Iterable[Sample], tally: Tally) -> tuple[Any, Any]:
        """(held, found): what stays in the worker, and what the settling needs."""
        raise NotImplementedError

    def settle(self, found: list, tally: Tally) -> Any:
        """What every worker needs to release its batches (`found`: per batch, in order)."""
        raise NotImplementedError

    def release(self, held: Any, settled: Any, tally: Tally) -> Iterator[Sample]:
        raise NotImplementedError

    def __call__(self, samples: Iterable[Sample], tally: Tally) -> Iterator[Sample]:
        held, found = self.gather(samples, tally)
        yield from self.release(held, self.settle([found], tally), tally)


def per_process(build: Callable[[], Stage]) -> Stage:
    """A stage built where it runs, once per process: for a stage holding what
    must not cross a fork (a server's client, its threads), built in each worker."""
    built: dict[int, Stage] = {}

    def stage(samples: Iterable[Sample], tally: Tally) -> Iterator[Sample]:
        pid = os.getpid()
        if pid not in built:
            built.clear()
            built[pid] = build()
        return built[pid](samples, tally)

    return stage


@dataclass
class Inputs:
    """This rank's inputs, as one process reads them."""

    names: list[str]
    pick: Picker
    carriers: list[str]  # the carrier of each input opened so far
    log: Callable[[str], None]
    stdin: BinaryIO | None = None


# -- jobs -------------------------------------------------------------------


@dataclass(kw_only=True)
class Job:
    seq: int = 0  # the batch's place in the run
    fmt: str = ""  # the output's format ('jsonl' | 'tar'), for a stage's outputs


@dataclass(kw_only=True)
class Lines(Job):
    """JSONL lines, parsed by the worker; `first_ordinal`: the picker's ordinal of
    the first record."""

    source: Source
    lines: list[bytes]
    first_line: int
    first_ordinal: int


@dataclass(kw_only=True)
class Samples(Job):
    samples: list[Sample] = field(default_factory=list)


@dataclass(kw_only=True)
class Release(Job):
    """The outputs of the batch `seq` a gathering worker holds."""


@dataclass(kw_only=True)
class Settled(Job):
    """What a gathering stage settled, for every worker."""

    value: Any


def batches(inputs: Inputs, reading: Tally) -> Iterator[tuple[Job, Part | None]]:
    """The inputs cut into batches, in order, each with what reading it here
    counted (tar only: JSONL is read by the workers), to merge before its own."""
    seq = count()
    for source, stream in open_each(inputs.names, inputs.carriers, inputs.log, inputs.stdin):
        if source.carrier == "jsonl":
            cut: Iterator[tuple[Job, Part | None]] = _lines(stream, source, inputs.pick)
        else:
            cut = _samples(read_tar(stream, source, reading, inputs.pick), reading)
        for job, lead in cut:
            job.seq = next(seq)
            yield job, lead


def _lines(stream: BinaryIO, source: Source, pick: Picker) -> Iterator[tuple[Lines, None]]:
    first_line = 1
    while lines := stream.readlines(BATCH_BYTES):
        first = pick.ordinal + 1
        pick.ordinal += len(lines) - sum(map(bytes.isspace, lines))  # blank lines: no record
        if pick.ordinal // pick.world >= pick.skip:  # else --resume skips all of them
            yield (
                Lines(source=source, lines=lines, first_line=first_line, first_ordinal=first),
                None,
            )
        first_line += len(lines)


def _samples(samples: Iterator[Sample], reading: Tally) -> Iterator[tuple[Samples, Part]]:
    """Batches of tar samples read here, each led by what reading counted since the
    batch before. A batch ends before a sample on whose way records were rejected,
    so that their lines are merged where one process writes them: between batches."""
    batch: list[Sample] = []
    size = 0
    lead = None
    for sample in samples:
        if batch and (reading.rejected or size >= BATCH_BYTES or len(batch) >= BATCH_SAMPLES):
            yield Samples(samples=batch), lead
            batch, size = [], 0
        if not batch:
            lead = reading.detach()
        batch.append(sample)
        size += sum(map(len, sample.members.values()))
    if batch:
        yield Samples(samples=batch), lead
    tail = reading.detach()
    if tail.n_in or tail.rejected:  # a reader counts inputs and rejections, nothing else
        yield Samples(), tail


# -- in a worker ------------------------------------------------------------


class Worker:
    """What a worker process does with a job: its records read and counted in a
    tally of its own (as the run's counts), then `work(job, samples, tally)`.
    Built before the fork, so `work` (a stage, a matcher) comes with it."""

    def __init__(
        self, work: Callable[[Job, Iterable[Sample], Tally], Any], run: Tally, pick: Picker
    ):
        self.work = work
        self.run = run  # the run's tally as it was at the fork: how to count
        self.rank, self.world, self.skip = pick.rank, pick.world, pick.skip

    def __call__(self, job: Job) -> tuple[Any, Part]:
        tally = self.run.apart()
        return self.work(job, self._samples(job, tally), tally), tally.detach()

    def _samples(self, job: Job, tally: Tally) -> Iterable[Sample]:
        if isinstance(job, Lines):
            pick = Picker(self.rank, self.world, self.skip)
            pick.ordinal = job.first_ordinal - 1
            return read_jsonl(job.lines, job.source, tally, pick, job.first_line)
        return job.samples if isinstance(job, Samples) else ()


def encode(samples: Iterable[Sample], fmt: str, tally: Tally, limits: ImageLimits) -> Encoded:
    """The samples as the output's writer writes them: JSONL lines, or tar member
    groups (rejecting here what the tar writer would). A sample with members
    bound for JSONL is left to the sink, which puts them in files."""
    parts: list[bytes] = []
    ends, idxs = array("q"), array("q")
    kept: dict[int, Sample] = {}
    end = 0
    dumps, newline = orjson.dumps, orjson.OPT_APPEND_NEWLINE
    for sample in samples:
        if fmt == "tar":
            data = tar_blocks(sample, tally, limits)
            if data is None:
                continue
        elif sample.members:
            kept[len(idxs)] = sample
            data = b""
        else:
            data = dumps(sample.record, option=newline)
        parts.append(data)
        end += len(data)
        ends.append(end)
        idxs.append(sample.idx)
    return Encoded(b"".join(parts), ends, idxs, kept)


class _Staging:
    """A plain stage's work: its outputs, encoded."""

    def __init__(self, stage: Stage, limits: ImageLimits):
        self.stage, self.limits = stage, limits

    def __call__(self, job: Job, samples: Iterable[Sample], tally: Tally) -> Encoded:
        return encode(self.stage(samples, tally), job.fmt, tally, self.limits)


class _Gathering:
    """A gathering stage's work: gather a batch and keep what it held; take what
    was settled; release a batch kept, its outputs encoded."""

    def __init__(self, stage: Gathering, limits: ImageLimits):
        self.stage, self.limits = stage, limits
        self.held: dict[int, Any] = {}
        self.settled: Any = None

    def __call__(self, job: Job, samples: Iterable[Sample], tally: Tally) -> Any:
        if isinstance(job, Settled):
            self.settled = job.value
            return None
        if isinstance(job, Release):
            released = self.stage.release(self.held.pop(job.seq), self.settled, tally)
            return encode(released, job.fmt, tally, self.limits)
        # Held records are many and hold no cycles: the collector would walk them all,
        # again and again, finding nothing (see curate's one-pass). Off for good here.
        gc.disable()
        self.held[job.seq], found = self.stage.gather(samples, tally)
        return found


# -- here -------------------------------------------------------------------


def write_stage(
    stage: Stage,
    inputs: Inputs,
    tally: Tally,
    sink: Sink,
    workers: int,
    limits: ImageLimits,
    update: Update = None,
) -> None:
    """Runs `stage` over the inputs in `workers` processes, writing into `sink`."""
    if isinstance(stage, Gathering):
        _gather_then_write(stage, inputs, tally, sink, workers, limits, update)
        return
    fmt = _Format(sink)
    with _pool(workers, _Staging(stage, limits), tally, inputs.pick) as pool:
        for encoded in _merged(pool, fmt.stamped(batches(inputs, tally.apart())), tally, update):
            sink.write_encoded(encoded)


def _gather_then_write(
    stage: Gathering,
    inputs: Inputs,
    tally: Tally,
    sink: Sink,
    workers: int,
    limits: ImageLimits,
    update: Update,
) -> None:
    fmt = _Format(sink)
    with _pool(workers, _Gathering(stage, limits), tally, inputs.pick) as pool:
        found = list(_merged(pool, batches(inputs, tally.apart()), tally, update))
        pool.each(Settled(value=stage.settle(found, tally)))
        releases = ((Release(seq=seq), None) for seq in range(len(found)))
        for encoded in _merged(pool, fmt.stamped(releases), tally, update):
            sink.write_encoded(encoded)


def each_batch(
    work: Callable[[Lines | Samples, Iterable[Sample], Tally], Any],
    inputs: Inputs,
    tally: Tally,
    workers: int,
    update: Update = None,
) -> Iterator[Any]:
    """`work(batch, samples, tally)` over the inputs in `workers` processes (a pass
    that writes no records): each batch's answer, in input order, its counts
    merged into `tally`. Close the iterator (`contextlib.closing`) to stop early."""
    with _pool(workers, work, tally, inputs.pick) as pool:
        yield from _merged(pool, batches(inputs, tally.apart()), tally, update)


def _pool(workers: int, work: Callable, tally: Tally, pick: Picker) -> Pool:
    from vecap_cli.stream.pool import Pool  # multiprocessing: ~10 ms, for runs that fork only

    return Pool(workers, Worker(work, tally, pick))


def _merged(
    pool: Pool, jobs: Iterable[tuple[Job, Part | None]], tally: Tally, update: Update
) -> Iterator[Any]:
    """The answers to `jobs`, in order, each batch's counts merged into `tally`
    first: what reading it here counted (its lead), then the worker's."""
    leads: deque[Part | None] = deque()

    def sent() -> Iterator[Job]:
        for job, lead in jobs:
            leads.append(lead)
            yield job

    for answer, part in pool.map(sent()):
        lead = leads.popleft()
        if lead is not None:
            tally.merge(lead)
        tally.merge(part)
        if update is not None:
            update(tally.n_in, tally.n_out)
        yield answer


class _Format:
    """The output's format, known once the first input is open (it may follow its carrier)."""

    def __init__(self, sink: Sink):
        self.sink, self.fmt = sink, ""

    def stamped(self, jobs: Iterable[tuple[Job, Part | None]]) -> Iterator[tuple[Job, Part | None]]:
        for job, lead in jobs:
            job.fmt = self.fmt = self.fmt or self.sink.output_format()
            yield job, lead
