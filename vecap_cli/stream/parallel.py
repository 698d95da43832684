"""--workers: a run's records in batches over worker processes (pool.py), written here.

This process cuts the inputs into batches (batches.py). A worker counts its
batch in a tally of its own (`Tally.apart`), runs the step over it and answers;
for a stage, the answer is its outputs, encoded for the output's format. This
process merges the tallies and writes the outputs batch after batch, in input
order: the output, the counts, --rejects and the shards --resume goes on from
are one process's.

One case keeps an order of its own: rejected lines of a stage that reads ahead
(curate matches 1,024 records at a time) come batch by batch; they are the same
lines, and in the same order unless a writer rejects records too (tar output
with missing images).
"""

from __future__ import annotations

import gc
import io
import os
from array import array
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from vecap_cli.stream.batches import BATCH_BYTES, Batch, Inputs, Job, Lines, Samples, batches
from vecap_cli.stream.images import ImageLimits
from vecap_cli.stream.jsonl import read_jsonl
from vecap_cli.stream.picker import Picker
from vecap_cli.stream.sample import Sample
from vecap_cli.stream.sinks import Encoded, Sink
from vecap_cli.stream.tally import Part, Tally
from vecap_cli.stream.tar import tar_blocks

if TYPE_CHECKING:
    from vecap_cli.stream.pool import Pool

Stage = Callable[[Iterable[Sample], Tally], Iterator[Sample]]
Update = Callable[[int, int], None] | None


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


# -- in a worker ------------------------------------------------------------


@dataclass(kw_only=True)
class Release(Job):
    """The outputs of the batch `seq` a gathering worker holds."""


@dataclass(kw_only=True)
class Settled(Job):
    """What a gathering stage settled, for every worker."""

    value: Any


Work = Callable[[Job, Iterable[Sample], Tally], tuple[Any, bytes | None]]


class Worker:
    """What a worker process does with a job: its records read and counted in a
    tally of its own (as the run's counts), then `work(job, samples, tally)`, which
    answers with a result and bytes (or None). Built before the fork, so `work` (a
    stage, a matcher) comes with it."""

    def __init__(self, work: Work, run: Tally, pick: Picker):
        self.work = work
        self.run = run  # the run's tally as it was at the fork: how to count
        self.rank, self.world, self.skip = pick.rank, pick.world, pick.skip

    def __call__(self, job: Job, data: bytes | memoryview | None) -> tuple[Any, bytes | None]:
        tally = self.run.apart()
        result, out = self.work(job, self._samples(job, data, tally), tally)
        return (result, tally.detach()), out

    def _samples(self, job: Job, data, tally: Tally) -> Iterable[Sample]:
        if isinstance(job, Lines):
            pick = Picker(self.rank, self.world, self.skip)
            pick.ordinal = job.first_ordinal - 1
            return read_jsonl(io.BytesIO(data), job.source, tally, pick, job.first_line)
        return job.samples if isinstance(job, Samples) else ()


def encode(
    samples: Iterable[Sample], job: Job, tally: Tally, limits: ImageLimits
) -> tuple[Encoded, bytes]:
    """The samples as the output's writer writes them: JSONL lines, or tar member
    groups (rejecting here what the tar writer would). A sample with members
    bound for JSONL is left to the sink, which puts them in files. Each output's
    input and end are noted when the job is `marked`."""
    out = io.BytesIO()  # each line written as made: a list keeping them all costs more
    put = out.write
    kept: dict[int, tuple[int, Sample]] = {}
    idxs, ends = array("q"), array("q")
    dumps, newline = orjson.dumps, orjson.OPT_APPEND_NEWLINE
    tar, marked = job.fmt == "tar", job.marked
    n = end = 0
    if not tar and not marked:  # the hot path: JSONL lines, one stream
        for sample in samples:
            if sample.members:
                kept[n] = (end, sample)
            else:
                end += put(dumps(sample.record, option=newline))
            n += 1
        return Encoded(n, kept, idxs, ends), out.getvalue()
    for sample in samples:
        if tar:
            data = tar_blocks(sample, tally, limits)
            if data is None:
                continue
            end += put(data)
        elif sample.members:
            kept[n] = (end, sample)
        else:
            end += put(dumps(sample.record, option=newline))
        n += 1
        if marked:
            idxs.append(sample.idx)
            ends.append(end)
    return Encoded(n, kept, idxs, ends), out.getvalue()


class _Staging:
    """A plain stage's work: its outputs, encoded."""

    def __init__(self, stage: Stage, limits: ImageLimits):
        self.stage, self.limits = stage, limits

    def __call__(self, job: Job, samples: Iterable[Sample], tally: Tally) -> tuple[Encoded, bytes]:
        return encode(self.stage(samples, tally), job, tally, self.limits)


class _Gathering:
    """A gathering stage's work: gather a batch and keep what it held; take what
    was settled; release a batch kept, its outputs encoded."""

    def __init__(self, stage: Gathering, limits: ImageLimits):
        self.stage, self.limits = stage, limits
        self.held: dict[int, Any] = {}
        # What the batches released held, never freed: a worker ends with os._exit
        # (multiprocessing's fork), so its records are never freed one by one,
        # which took a fifth of curate's release (the memory peaks before it anyway).
        self.spent: list[Any] = []
        self.settled: Any = None

    def __call__(self, job: Job, samples: Iterable[Sample], tally: Tally) -> tuple[Any, Any]:
        if isinstance(job, Settled):
            self.settled = job.value
            return None, None
        if isinstance(job, Release):
            held = self.held.pop(job.seq)
            self.spent.append(held)
            released = self.stage.release(held, self.settled, tally)
            return encode(released, job, tally, self.limits)
        # Held records are many and hold no cycles: the collector would walk them all,
        # again and again, finding nothing (see curate's one-pass). Off for good here.
        gc.disable()
        self.held[job.seq], found = self.stage.gather(samples, tally)
        return found, None


# -- here -------------------------------------------------------------------


def write_stage(
    stage: Stage,
    inputs: Inputs,
    tally: Tally,
    sink: Sink,
    workers: int,
    limits: ImageLimits,
    update: Update = None,
    records: int | None = None,
) -> None:
    """Runs `stage` over the inputs in `workers` processes, writing into `sink`;
    `records`: the most records a batch holds (see batches.py)."""
    if isinstance(stage, Gathering):
        _gather_then_write(stage, inputs, tally, sink, workers, limits, update)
        return
    fmt = _Format(sink)
    with _pool(workers, _Staging(stage, limits), tally, inputs.pick) as pool:
        jobs = fmt.stamped(batches(inputs, tally.apart(), records))
        for encoded, data in _merged(pool, jobs, tally, update):
            sink.write_encoded(encoded, data)


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
        found = [
            result for result, _ in _merged(pool, batches(inputs, tally.apart()), tally, update)
        ]
        pool.each(Settled(value=stage.settle(found, tally)))
        releases = (Batch(Release(seq=seq), None, None) for seq in range(len(found)))
        for encoded, data in _merged(pool, fmt.stamped(releases), tally, update):
            sink.write_encoded(encoded, data)


def each_batch(
    work: Work, inputs: Inputs, tally: Tally, workers: int, update: Update = None
) -> Iterator[Any]:
    """`work(batch, samples, tally)` over the inputs in `workers` processes (a pass
    that writes no records; its bytes are None): each batch's result, in input
    order, its counts merged into `tally`. Close the iterator
    (`contextlib.closing`) to stop early."""
    with _pool(workers, work, tally, inputs.pick) as pool:
        for result, _ in _merged(pool, batches(inputs, tally.apart()), tally, update):
            yield result


def _pool(workers: int, work: Work, tally: Tally, pick: Picker) -> Pool:
    from vecap_cli.stream.pool import Pool  # multiprocessing: ~10 ms, for runs that fork only

    # a batch's outputs may outgrow its input (a caption each, mix --policy all)
    return Pool(workers, Worker(work, tally, pick), slot=4 * BATCH_BYTES)


def _merged(pool: Pool, jobs: Iterable[Batch], tally: Tally, update: Update) -> Iterator[Any]:
    """The answers to `jobs`, in order, each batch's counts merged into `tally`
    first: what reading it here counted (its lead), then the worker's."""
    leads: deque[Part | None] = deque()

    def sent() -> Iterator[tuple[Job, bytes | None]]:
        for batch in jobs:
            leads.append(batch.lead)
            yield batch.job, batch.data

    for (result, part), data in pool.map(sent()):
        lead = leads.popleft()
        if lead is not None:
            tally.merge(lead)
        tally.merge(part)
        if update is not None:
            update(tally.n_in, tally.n_out)
        yield result, data


class _Format:
    """How the sink wants outputs encoded: its format, known once the first input is
    open (it may follow its carrier), and whether it cuts shards."""

    def __init__(self, sink: Sink):
        self.sink, self.fmt = sink, ""

    def stamped(self, jobs: Iterable[Batch]) -> Iterator[Batch]:
        for batch in jobs:
            batch.job.fmt = self.fmt = self.fmt or self.sink.output_format()
            batch.job.marked = self.sink.cuts
            yield batch
