"""The passes of `vecap curate` over record streams: one call per command.

    curate(opts, config, metadata)           count, then balance (the one-pass)
    count(opts, config, metadata)            entry counts of this rank's share
    balance(opts, config, metadata, counts)  keep records by counts made elsewhere
    merge(paths, output)                     add counts files up
    report(counts, t)                        the distribution of counts (and a plot)
    build_metadata(recipe, output)           an entry list, as MetaCLIP built one

`opts` are the stream flags (for `count`, `opts.output` is the counts file).
These calls open the inputs and outputs through the stream core; the record
logic they chain is in stages.py.

The one-pass reads its inputs once when it can (`reads_once`): one stage
matches every record, holds the matched ones in memory until all are counted,
then balances them. Otherwise (tar inputs, --resume, several ranks) it reads
twice: a counting pass over the whole input, then the record pass, which
replays the first pass's decisions (`MatchCache`) rather than matching again;
stdin is spooled to a temporary file that the stream core reads as '-' both
times, and a pipe: input runs twice.
"""

from __future__ import annotations

import gc
import hashlib
import os
import shutil
import sys
import tempfile
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import replace
from functools import partial
from itertools import chain
from typing import BinaryIO

import orjson

from vecap_cli.errors import VecapError
from vecap_cli.steps.curate import stages
from vecap_cli.steps.curate.balancing import Balancer, entry_probabilities, head_tail
from vecap_cli.steps.curate.counts import (
    Accumulator,
    EntryCounts,
    read_counts,
    write_counts,
)
from vecap_cli.steps.curate.counts import merge as merge_files
from vecap_cli.steps.curate.matching import MATCH_RULES, Matcher, can_match
from vecap_cli.steps.curate.metadata import (
    Metadata,
    Recipe,
    gather,
    read_metadata,
    write_metadata,
)
from vecap_cli.steps.curate.stages import CurateConfig, MatchCache
from vecap_cli.steps.curate.texts import TextMatcher
from vecap_cli.stream.parallel import Gathering, each_batch
from vecap_cli.stream.progress import Report, measure, progress, showing, shown
from vecap_cli.stream.runner import (
    StreamOptions,
    per_rank,
    rank_inputs,
    read_inputs,
    run_stream,
    write_stats,
)
from vecap_cli.stream.sample import Sample
from vecap_cli.stream.sinks import open_rejects
from vecap_cli.stream.sources import carrier_from_name, expand
from vecap_cli.stream.tally import Tally

Log = Callable[[str], None]


def load(path: str, log: Log, config: CurateConfig = CurateConfig()) -> tuple[Metadata, Matcher]:
    """The metadata at `path` and its matcher (a warning when it holds no entry):
    a `Matcher`, or for `config.per_text` one whose `find_many` gives a `Found` per
    text (per language under metaclip2: a `Languages` folder, a `WorldMatcher`)."""
    rule = MATCH_RULES[config.rule]
    if rule.per_language:
        from vecap_cli.steps.curate.langid import LanguageId
        from vecap_cli.steps.curate.worldwide import WorldMatcher, read_languages

        languages = read_languages(path)
        if not languages.entries:
            log(f"warning: '{path}' has no entries: nothing can match")
        return languages, WorldMatcher(languages, rule.pad, LanguageId())
    metadata = read_metadata(path)
    if not metadata.entries:
        log(f"warning: '{path}' has no entries: nothing can match")
    matcher = Matcher(metadata.entries, rule.pad)
    return metadata, (TextMatcher(matcher) if config.per_text else matcher)


# Memory the one-pass holds per byte of JSONL input, when every record matches:
# ~1.2 kB per LAION record of ~190 bytes (dict, strings, Sample, ids). A .gz
# input is counted at 4 times its size.
HELD_PER_BYTE = 6.5


def curate(
    opts: StreamOptions, config: CurateConfig, metadata: str, save_counts: str | None = None
) -> Tally:
    """The one-pass: counts the entries over the whole input, then balances this
    rank's share into the output. `save_counts`: also write the counts there."""
    opts = _workers_for(opts, config)
    meta, matcher = load(metadata, opts.log, config)
    if reads_once(opts, log=opts.log):
        stage = _CountThenBalance(config, meta, matcher, save_counts)
        return run_stream("curate", opts, stage, (config, meta.sha256))
    return _curate_twice(opts, config, meta, matcher, save_counts)


def _workers_for(opts: StreamOptions, config: CurateConfig) -> StreamOptions:
    """--dedup keeps the first of each duplicate, which only a process that sees
    every record in order can tell: it runs in one."""
    if opts.workers > 1 and config.dedup:
        opts.log("note: --dedup runs in one process (the first of each duplicate is kept)")
        return replace(opts, workers=1)
    return opts


def reads_once(
    opts: StreamOptions, available: float | None = None, log: Log = lambda line: None
) -> bool:
    """Whether the one-pass can hold this run's records in memory and read once:
    one worker (several each count the whole input but balance a share), a
    fresh run (--resume skips what finished shards hold, which counting needs),
    no tar input (its images would be held too), and input files whose records
    fit in half the `available` memory (default: what this machine or cgroup has
    free). Stdin and pipes cannot be sized: they are held."""
    if opts.world_size > 1 or opts.resume:
        return False
    names = expand(opts.inputs)
    if any(carrier_from_name(name) == "tar" for name in names):
        return False
    files = [n for n in names if n != "-" and not n.startswith(("pipe:", "http://", "https://"))]
    need = HELD_PER_BYTE * sum(os.path.getsize(n) * (4 if n.endswith(".gz") else 1) for n in files)
    available = _free_memory() if available is None else available
    if need > available / 2:
        log(
            f"note: reading the input twice: holding its records could take {need / 2**30:.1f} "
            f"GiB, and {available / 2**30:.1f} GiB are free"
        )
        return False
    return True


def _free_memory() -> float:
    """MemAvailable, or a cgroup's limit when lower (a Slurm job, a container)."""
    free = float("inf")
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    free = int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as f:
                free = min(free, int(f.read()))
        except (OSError, ValueError):  # absent, or "max"
            pass
    return free


class _CountThenBalance(Gathering):
    """The one-pass as one stage: holds the matched records while counting every
    record (gather), counts the entries (settle), then balances the records held
    (release); about 1.2 kB held per LAION-like record. With --workers, each
    worker holds the records of its batches."""

    def __init__(
        self, config: CurateConfig, meta: Metadata, matcher: Matcher, save_counts: str | None
    ):
        self.config, self.meta, self.matcher, self.save_counts = config, meta, matcher, save_counts

    def __call__(self, samples: Iterable[Sample], tally: Tally) -> Iterator[Sample]:
        with _no_cycle_collection():
            yield from super().__call__(samples, tally)

    def gather(self, samples: Iterable[Sample], tally: Tally) -> tuple[list, tuple]:
        pairs = stages.prepare(samples, tally, self.config, self.matcher.find_many)
        held, records, matched = stages.hold(pairs, tally, self.config.keep_all)
        return held, (records, matched, array("i", chain.from_iterable(ids for _, ids in held)))

    def settle(self, found: list[tuple], tally: Tally) -> Balancer:
        accumulator = Accumulator(len(self.meta.entries))
        for _, _, ids in found:
            accumulator.add_all(ids)
        records, matched = sum(f[0] for f in found), sum(f[1] for f in found)
        counts = accumulator.result(self.meta.sha256, self.config.matching(), records, matched)
        if self.save_counts:
            write_counts(self.save_counts, counts)
        probs, tally.extra["curate"] = _probabilities(self.config, self.meta, counts)
        return Balancer(probs, self.config.seed)

    def release(self, held: list, balancer: Balancer, tally: Tally) -> Iterator[Sample]:
        # `held` is freed by whoever holds it: the one-pass when it ends, with the
        # collector still off; a worker process never (see parallel._Gathering)
        yield from stages.balance(held, tally, self.config, balancer)


@contextmanager
def _no_cycle_collection() -> Iterator[None]:
    """Python's cycle collector off while records are held: each full collection
    walks every object alive, and as the held records grow it runs again and again
    (a quarter of the one-pass's time at 200k records), finding nothing, as records
    hold no cycles. Reference counting still frees everything else."""
    was_on = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_on:
            gc.enable()


def _curate_twice(
    opts: StreamOptions,
    config: CurateConfig,
    meta: Metadata,
    matcher: Matcher,
    save_counts: str | None,
) -> Tally:
    """The one-pass over inputs read twice: counting, then the record pass."""
    with _spooled_stdin(opts.inputs) as stdin:
        # One worker replays its own decisions; several decide again for their
        # share, as the counting pass numbered the whole input, not the share.
        cache = MatchCache() if opts.world_size == 1 else None
        first = Tally("curate", strict=opts.strict)
        whole = StreamOptions(
            inputs=opts.inputs, quiet=opts.quiet, log=opts.log, workers=opts.workers
        )
        counts = _count(whole, first, config, meta, matcher, cache, stdin)
        if save_counts:
            write_counts(save_counts, counts)
        cleaned = first.extra.get("html_cleaned")  # over the whole input

        def decide(samples, tally):
            if cache is None or not cache.replayable:  # several texts: matched again
                return stages.prepare(samples, tally, config, matcher.find_many)
            if cleaned is not None:
                tally.extra["html_cleaned"] = cleaned
            return cache.replaying(samples, tally, config)

        if stdin is not None:
            stdin.seek(0)
        stage = _balancing(config, meta, counts, decide)
        tally = run_stream(
            "curate", opts, stage, (config, meta.sha256), stdin=stdin, started=first.started
        )
    if opts.world_size == 1 and tally.n_in != first.n_in:
        raise VecapError(
            f"the input changed between the two passes ({first.n_in:,} then {tally.n_in:,} records)"
        )
    return tally


def count(opts: StreamOptions, config: CurateConfig, metadata: str) -> Tally:
    """Writes the entry counts of this rank's share to `opts.output` (FILE.rankR.json
    for several ranks; '-' for stdout), and --stats; returns the tally."""
    opts = _workers_for(opts, config)
    meta, matcher = load(metadata, opts.log, config)
    rejects = None
    if opts.rejects:
        rejects = open_rejects(per_rank(opts.rejects, opts.rank, opts.world_size))
    tally = Tally("curate count", rejects=rejects, strict=opts.strict)
    report = [] if opts.progress else None  # _count puts this run's Report in it
    try:
        counts = _count(opts, tally, config, meta, matcher, report=report)
    finally:
        if rejects is not None:
            rejects.close()
    output = opts.output
    write_counts(output if output == "-" else per_rank(output, opts.rank, opts.world_size), counts)
    if opts.stats:
        split = head_tail(counts.counts, 1)
        tally.extra["curate"] = {
            **_identity(meta),
            "entries_matched": split["entries_matched"],
            "matches": split["matches"],
        }
        write_stats(per_rank(opts.stats, opts.rank, opts.world_size), tally)
    if report:
        report[0].write(tally.n_in, tally.n_out, done=True)
    return tally


def balance(opts: StreamOptions, config: CurateConfig, metadata: str, counts: str) -> Tally:
    """Balances this rank's share by the counts file `counts` (made by `count`, merged)."""
    opts = _workers_for(opts, config)
    meta, matcher = load(metadata, opts.log, config)
    entry_counts = read_counts(counts, meta)  # MetaCLIP's files are read against `meta`
    if entry_counts.metadata_sha != meta.sha256 or entry_counts.n_entries != len(meta.entries):
        raise VecapError(
            f"'{counts}' was counted with another metadata list than '{metadata}' "
            f"({entry_counts.n_entries:,} entries, sha256 {entry_counts.metadata_sha[:12]}...)"
        )
    if entry_counts.matching and entry_counts.matching != config.matching():  # {}: MetaCLIP's
        opts.log(
            f"warning: '{counts}' was counted with other matching settings: "
            f"{entry_counts.matching} (now {config.matching()})"
        )

    def decide(samples, tally):
        return stages.prepare(samples, tally, config, matcher.find_many)

    stage = _balancing(config, meta, entry_counts, decide)
    counts_id = hashlib.sha1(orjson.dumps(entry_counts.counts)).hexdigest()
    return run_stream("curate balance", opts, stage, (config, meta.sha256, counts_id))


def merge(paths: Sequence[str], output: str, log: Log) -> EntryCounts:
    """Adds up counts files into `output` ('-': stdout)."""
    merged = merge_files(paths)
    write_counts(output, merged)
    log(f"merged {len(paths)} files: {merged.records:,} records, {merged.matched:,} matched")
    return merged


def build_metadata(recipe: Recipe, output: str, log: Log) -> list[str]:
    """Builds the entry list of `recipe` into `output` ('-': a JSON list on stdout)."""
    entries, added = gather(recipe)
    write_metadata(output, entries)
    parts = ", ".join(f"{name} {n:,}" for name, n in added.items())
    log(f"{len(entries):,} entries ({parts})")
    dead = sum(not can_match(e) for e in entries)
    if dead:
        log(f"note: {dead:,} entries hold punctuation that MetaCLIP's matching never matches")
    return entries


def report(
    counts: str,
    t: float,
    metadata: str | None = None,
    top: int = 20,
    plot: str | None = None,
    show: Log = print,
    t_per_lang: Sequence[tuple[str, int]] = (),
) -> None:
    """Shows the distribution of a counts file as text (entries named when
    `metadata` is given; per language when it is a metaclip2 folder, each at its t),
    then, with `plot`, draws it there (log-log, t marked)."""
    from vecap_cli.steps.curate.report import describe, describe_languages
    from vecap_cli.steps.curate.report import plot as draw

    spans = None
    if metadata is not None and os.path.isdir(metadata):
        from vecap_cli.steps.curate.worldwide import language_ts, read_languages

        meta = read_languages(metadata)
        spans = meta.spans
    else:
        if t_per_lang:
            raise VecapError("--t-per-lang goes with a --metadata folder of lists per language")
        meta = read_metadata(metadata) if metadata is not None else None
    entry_counts = read_counts(counts, meta)
    entries = None
    if meta is not None:
        if meta.sha256 != entry_counts.metadata_sha:
            raise VecapError(f"'{counts}' was counted with another metadata list than '{metadata}'")
        entries = meta.entries
    if spans is not None:
        ts = language_ts(entry_counts.counts, meta, int(t), dict(t_per_lang))
        show(describe_languages(entry_counts, spans, meta.entries, ts, top))
    else:
        show(describe(entry_counts, t, entries, top))
    if plot is not None:
        try:
            draw(entry_counts, t, plot, spans)
        except OSError as err:
            raise VecapError(f"cannot write '{plot}': {err.strerror}") from None


def png_beside(path: str) -> str:
    """Where `report` draws by default: COUNTS with .png for .json(.gz)."""
    for suffix in (".json.gz", ".json", ".gz"):
        if path.endswith(suffix):
            return path[: -len(suffix)] + ".png"
    return path + ".png"


def _identity(meta: Metadata) -> dict:
    return {"metadata": {"sha256": meta.sha256, "entries": len(meta.entries)}}


def _count(
    opts: StreamOptions,
    tally: Tally,
    config: CurateConfig,
    meta: Metadata,
    matcher: Matcher,
    cache: MatchCache | None = None,
    stdin: BinaryIO | None = None,
    report: list[Report] | None = None,
) -> EntryCounts:
    """Reads this rank's share of `opts.inputs` once; `cache` records the decisions.
    With `report` (a list), this pass writes its progress to opts.progress, and
    puts the Report in it (for the caller's last word)."""
    accumulator = Accumulator(len(meta.entries))
    count = _count_in_workers if opts.workers > 1 else _count_here
    inputs = rank_inputs(opts.inputs, opts.rank, opts.world_size, opts.log, stdin)
    if shown(not opts.quiet) or report is not None:
        inputs.meter = measure(inputs.names)
    if report is not None and opts.progress:
        report.append(Report(opts.progress, inputs.meter, inputs.pick.world > 1))
    label = f"{tally.command} (counting)"
    with progress(label, not opts.quiet, inputs.meter, report[0] if report else None) as update:
        records, matched = count(opts, tally, config, matcher, accumulator, cache, inputs, update)
    return accumulator.result(meta.sha256, config.matching(), records, matched)


def _count_here(
    opts, tally, config, matcher, accumulator, cache, inputs, update
) -> tuple[int, int]:
    samples = read_inputs(inputs, tally)
    # counted from the cache at the end when there is one, else as matched
    match = matcher.find_many if cache is not None else accumulator.recording(matcher.find_many)
    if update is not None:
        samples = showing(samples, tally, update)
    pairs = stages.prepare(samples, tally, config, match, cache)
    records, matched = stages.count(pairs, tally)
    if cache is not None:
        accumulator.add_all(cache.ids)
    return records, matched


def _count_in_workers(
    opts, tally, config, matcher, accumulator, cache, inputs, update
) -> tuple[int, int]:
    """Each worker counts a batch and caches what it decided; the ids and the
    caches of the batches are joined here, in input order."""
    work = partial(_count_batch, config=config, matcher=matcher)
    records = matched = 0
    with closing(each_batch(work, inputs, tally, opts.workers, update)) as batches:
        for batch_records, batch_matched, decided in batches:
            records, matched = records + batch_records, matched + batch_matched
            accumulator.add_all(decided.ids)
            if cache is not None:
                cache.extend(decided)
    return records, matched


def _count_batch(
    batch, samples: Iterable[Sample], tally: Tally, config: CurateConfig, matcher: Matcher
) -> tuple[tuple[int, int, MatchCache], None]:
    """The counting pass over one batch, in a worker: (records, matched, what
    `prepare` decided for each of its inputs, from the first that reached it)."""
    samples = iter(samples)
    head = next(samples, None)
    decided = MatchCache(head.idx if head is not None else 0)
    if head is None:
        return (0, 0, decided), None
    pairs = stages.prepare(chain([head], samples), tally, config, matcher.find_many, decided)
    return (*stages.count(pairs, tally), decided), None


def _balancing(config: CurateConfig, meta: Metadata, counts: EntryCounts, decide):
    """The record pass's stage: `curate` on every record, the kept ones (or all) out.

    `decide(samples, tally)` filters and matches: `prepare`, or a cache's replay.
    """
    probs, summary = _probabilities(config, meta, counts)
    balancer = Balancer(probs, config.seed)

    def stage(samples, tally):
        tally.extra["curate"] = summary
        yield from stages.balance(decide(samples, tally), tally, config, balancer)

    return stage


def _summary(meta: Metadata, counts: EntryCounts, t: int) -> dict:
    return {**_identity(meta), "t": t, **head_tail(counts.counts, t)}


def _probabilities(config: CurateConfig, meta, counts: EntryCounts) -> tuple[list[float], dict]:
    """p_e per (global) entry id, and the summary for --stats: under metaclip2, a t
    per language (`worldwide.language_ts`) and each language's head and tail."""
    if not MATCH_RULES[config.rule].per_language:
        return entry_probabilities(counts.counts, config.t), _summary(meta, counts, config.t)
    from vecap_cli.steps.curate.worldwide import language_ts, probabilities

    ts = language_ts(counts.counts, meta, config.t, dict(config.t_per_lang))
    languages = {}
    for lang, start, end in meta.slices():
        if lang in ts:
            split = head_tail(counts.counts[start:end], ts[lang])
            languages[lang] = {"entries": end - start, "t": ts[lang], **split}
    summary = {
        **_identity(meta),
        "t": config.t,
        **_added(languages.values()),
        "languages": languages,
    }
    return probabilities(counts.counts, meta, ts), summary


def _added(splits) -> dict:
    """`head_tail`s of the languages (each at its own t) added up."""
    total = {"entries_matched": 0, "matches": 0, "matches_capped_at_t": 0}
    head = {"entries": 0, "matches": 0}
    for split in splits:
        for key in total:
            total[key] += split[key]
        for key in head:
            head[key] += split["head"][key]
    share = head["matches"] / total["matches"] if total["matches"] else 0.0
    tail = {key: total["entries_matched" if key == "entries" else key] - head[key] for key in head}
    return {
        "entries_matched": total["entries_matched"],
        "matches": total["matches"],
        "head": {**head, "share": round(share, 6)},
        "tail": {**tail, "share": round(1 - share, 6) if total["matches"] else 0.0},
        "matches_capped_at_t": total["matches_capped_at_t"],
    }


@contextmanager
def _spooled_stdin(inputs: Sequence[str]) -> Iterator[BinaryIO | None]:
    """A temporary copy of stdin when '-' is an input (it is read twice), else None."""
    if "-" not in inputs:
        yield None
        return
    with tempfile.TemporaryFile(prefix="vecap-curate-") as copy:
        shutil.copyfileobj(sys.stdin.buffer, copy, 1 << 20)
        copy.seek(0)
        yield copy
