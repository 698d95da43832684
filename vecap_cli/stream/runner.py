"""One call that runs a step over a stream: inputs → stage → output, with accounting.

Every record command (curate, caption, rewrite, mix) is this call with its own
stage. A stage is a generator `stage(samples, tally) -> samples`: it may drop
(`tally.drop`), reject (`tally.reject`) or expand (`tally.add`) records, and
must keep their order. With --workers N, worker processes run it over batches
of the records (parallel.py): it must then treat each batch alike, wherever and
in whatever order it comes, as every draw from (seed, key) does.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import BinaryIO

import orjson

from vecap_cli.errors import VecapError
from vecap_cli.placement import Placement
from vecap_cli.stream.batches import Inputs
from vecap_cli.stream.images import DEFAULT_LIMITS, ImageLimits
from vecap_cli.stream.jsonl import read_jsonl
from vecap_cli.stream.parallel import Stage, write_stage
from vecap_cli.stream.picker import Picker
from vecap_cli.stream.progress import Report, measure, progress, showing, shown
from vecap_cli.stream.sample import Sample
from vecap_cli.stream.sinks import (
    NamedStream,
    OutputSpec,
    Sink,
    fingerprint,
    open_rejects,
    open_sink,
    pattern_error,
    shard_regex,
    write_atomically,
)
from vecap_cli.stream.sources import expand, open_each
from vecap_cli.stream.tally import Tally
from vecap_cli.stream.tar import read_tar


@dataclass(frozen=True)
class RunOptions(Placement):
    """The flags every command shares, resolved at the CLI edge; as a Placement, this
    process's rank, world size and rendezvous, from the flags or the launcher's
    environment."""

    stats: str | None = None
    rejects: str | None = None
    strict: bool = False
    seed: int = 0
    quiet: bool = False
    log: Callable[[str], None] = field(default=lambda line: None, compare=False)
    image_limits: ImageLimits = DEFAULT_LIMITS  # --max-image-bytes, --max-pixels
    workers: int = 1  # --workers: processes running the step (1: this one alone)
    progress: str | None = None  # where a launch reads this task's progress (PROGRESS_ENV)


@dataclass(frozen=True)
class StreamOptions(RunOptions):
    """RunOptions plus the flags of commands that read and write records."""

    inputs: tuple[str, ...] = ("-",)
    output: str = "-"
    format: str | None = None
    shard_size: int = 10_000
    resume: bool = False
    images_dir: str | None = None


def per_rank(path: str, rank: int, world_size: int) -> str:
    """`stats.json` → `stats.rank1.json` when several ranks would share one name."""
    if "{rank}" in path:
        return path.format(rank=rank)
    if world_size == 1:
        return path
    stem, ext = os.path.splitext(path)
    return f"{stem}.rank{rank}{ext}"


def split_inputs(names: Sequence[str], rank: int, world_size: int) -> tuple[list[str], int, int]:
    """This rank's inputs, and the (rank, world) that still splits their records.

    With at least as many inputs as ranks, ranks take whole inputs (shards) in
    turn; with fewer (one big JSONL, stdin), every rank reads all and keeps every
    world_size-th record.
    """
    if world_size == 1:
        return list(names), 0, 1
    if len(names) >= world_size:
        return list(names[rank::world_size]), 0, 1
    return list(names), rank, world_size


def read_inputs(inputs: Inputs, tally: Tally) -> Iterator[Sample]:
    """The samples of `inputs` (see `rank_inputs`), counted in `tally`."""
    opened = open_each(inputs.names, inputs.carriers, inputs.log, inputs.stdin, inputs.meter)
    for source, stream in opened:
        reader = read_jsonl if source.carrier == "jsonl" else read_tar
        yield from reader(stream, source, tally, inputs.pick)


def rank_inputs(
    specs: Sequence[str],
    rank: int = 0,
    world_size: int = 1,
    log=lambda line: None,
    stdin: BinaryIO | None = None,
) -> Inputs:
    """This rank's inputs of `specs` (as on the command line), and how to number
    their records."""
    return _mine(expand(specs), rank, world_size, log, stdin, [])


def _mine(names, rank, world_size, log, stdin, carriers: list[str], skip: int = 0) -> Inputs:
    """This rank's share of `names`; `skip`: the first records, which --resume skips."""
    mine, split_rank, split_world = split_inputs(names, rank, world_size)
    return Inputs(mine, Picker(split_rank, split_world, skip), carriers, log, stdin)


def iter_samples(
    inputs: Sequence[str],
    tally: Tally,
    *,
    rank: int = 0,
    world_size: int = 1,
    log=lambda line: None,
    stdin: BinaryIO | None = None,
) -> Iterator[Sample]:
    """This rank's samples of `inputs` (specs as on the command line), counted in `tally`.

    For commands that consume records without writing a stream (train, eval,
    curate count); record commands use `run_stream`. `stdin`: what '-' reads,
    when not sys.stdin (see `open_source`).
    """
    yield from read_inputs(rank_inputs(inputs, rank, world_size, log, stdin), tally)


def run_stream(
    command: str,
    opts: StreamOptions,
    stage: Stage,
    config: object = None,
    *,
    stdin: BinaryIO | None = None,
    started: float | None = None,
    batch_records: int | None = None,
) -> Tally:
    """Runs `stage` over this rank's inputs into the output; returns the tally.

    `config` goes into the fingerprint that --resume checks; `stdin` is what '-'
    reads, when not sys.stdin (see `open_source`); `started`: when the run began,
    if before this call (a pass before it); `batch_records`: with --workers, the
    most records in one worker's batch (a stage whose records each cost a model's
    answer: small batches, so that every worker has some).
    """
    names = expand(opts.inputs)
    tally = Tally(command, strict=opts.strict)
    if started is not None:
        tally.started = started
    carriers: list[str] = []
    spec = OutputSpec(
        path=opts.output,
        format=opts.format,
        shard_size=opts.shard_size,
        images_dir=opts.images_dir,
        rank=opts.rank,
        world_size=opts.world_size,
        resume=opts.resume,
        fingerprint=fingerprint(command, names, opts.format, opts.shard_size, config),
        image_limits=opts.image_limits,
    )
    sink: Sink = open_sink(spec, tally, lambda: carriers[0] if carriers else "jsonl")
    ok, report = False, None
    try:
        skip = getattr(sink, "skip", 0)
        rejects = _open_rejects(opts, skip, tally.sealed_rejects_bytes)
        tally.rejects = rejects
        mine = _mine(names, opts.rank, opts.world_size, opts.log, stdin, carriers, skip)
        if shown(not opts.quiet) or opts.progress:
            mine.meter = measure(mine.names)
        if opts.progress:
            report = Report(opts.progress, mine.meter, shares_records=mine.pick.world > 1)
        with progress(command, not opts.quiet, mine.meter, report) as update, sink.failing_writes():
            if opts.workers > 1:
                write_stage(
                    stage, mine, tally, sink, opts.workers, opts.image_limits, update, batch_records
                )
            elif update is None:
                sink.write_all(stage(read_inputs(mine, tally), tally))
            else:
                samples = showing(read_inputs(mine, tally), tally, update)
                for n, sample in enumerate(stage(samples, tally)):
                    sink.write(sample)
                    if not n & 1023:
                        update(tally.n_in, tally.n_out)
        ok = True
    finally:
        _close(sink, tally, ok)
    if opts.stats:
        write_stats(per_rank(opts.stats, opts.rank, opts.world_size), tally)
    if report is not None:
        report.write(tally.n_in, tally.n_out, done=True)
    return tally


def _close(sink: Sink, tally: Tally, ok: bool) -> None:
    """Close the output (sealing its last shard), then --rejects; a failed run
    still writes the rejects it met (a resumed run cuts the unsealed ones)."""
    try:
        sink.close(ok)
    finally:
        if tally.rejects is not None:
            try:
                tally.flush_rejects()
                tally.rejects.close()
            except VecapError:
                if ok:
                    raise
            tally.rejects = None


def _open_rejects(opts: StreamOptions, skip: int, sealed: int | None) -> NamedStream | None:
    """The rejects file; on resume, cut to the size the finished shards sealed."""
    if not opts.rejects:
        return None
    path = per_rank(opts.rejects, opts.rank, opts.world_size)
    if not (opts.resume and skip) or not _regular_or_absent(path):
        return open_rejects(path)
    if sealed is None:
        raise VecapError(
            f"cannot resume with --rejects '{path}': the finished shards were written "
            "without it; run without --resume, or without --rejects"
        )
    try:
        stream = open(path, "r+b")
        size = os.fstat(stream.fileno()).st_size
        stream.seek(max(sealed - 1, 0))
        last = stream.read(1) if sealed else b"\n"
    except OSError as err:
        raise VecapError(
            f"cannot resume: the rejects of the finished shards, '{path}', cannot be read: "
            f"{err.strerror}"
        ) from None
    if size < sealed or last != b"\n":
        stream.close()
        raise VecapError(
            f"cannot resume: '{path}' is damaged ({size:,} bytes, the finished shards "
            f"sealed {sealed:,}); run without --resume"
        )
    stream.truncate(sealed)
    stream.seek(sealed)
    return NamedStream(stream, path)


def _regular_or_absent(path: str) -> bool:
    return not os.path.exists(path) or os.path.isfile(path)


def write_stats(path: str, tally: Tally) -> None:
    write_atomically(path, orjson.dumps(tally.as_dict(), option=orjson.OPT_INDENT_2))


def output_problem(opts: StreamOptions) -> str | None:
    """Why the output flags cannot work together, or None: a bad -o pattern, or
    --stats/--rejects naming the output (a shard of it), each other or an input."""
    problem = pattern_error(opts.output)
    if problem:
        return problem
    named = {}
    for flag, path in (("--stats", opts.stats), ("--rejects", opts.rejects)):
        if path:
            try:
                named[flag] = os.path.realpath(per_rank(path, opts.rank, opts.world_size))
            except (KeyError, ValueError, IndexError):
                return f"{flag} '{path}': the only field a name may hold is {{rank}}"
    if len(set(named.values())) < len(named):
        return f"--stats and --rejects name the same file '{opts.stats}'"
    output = opts.output
    if output != "-":
        folder, base = os.path.split(output)
        real = os.path.join(os.path.realpath(folder or "."), base)
        sharded = OutputSpec(output).sharded
        for flag, path in named.items():
            if shard_regex(real).fullmatch(path) if sharded else path == real:
                return f"{flag} '{path}' would overwrite the output -o '{output}'"
    inputs = {os.path.realpath(name) for name in _input_names(opts.inputs)}
    for flag, path in named.items():
        if path in inputs:
            return f"{flag} '{path}' would overwrite an input"
    return None


_STREAMS = ("pipe:", "http://", "https://")


def _input_names(specs: Sequence[str]) -> list[str]:
    try:
        return [n for n in expand(specs) if n != "-" and not n.startswith(_STREAMS)]
    except VecapError:
        return []  # reported when the run reads them
