"""vecap curate: MetaCLIP curation, in one pass or in passes that shard.

    vecap curate [run] INPUT... --metadata M        count, then balance (the default)
    vecap curate metadata -o M                      build an entry list
    vecap curate count INPUT... --metadata M        entry counts (add up with --merge)
    vecap curate balance INPUT... --metadata M --counts C
    vecap curate report C                           the distribution, and a plot

`_CurateGroup` sends `vecap curate ARGS` to `run` unless ARGS starts with a
command name, so the one-pass reads like every other record command.
"""

import sys
import time
from contextlib import contextmanager
from typing import Annotated

import typer
from typer.core import TyperGroup

from vecap_cli.cli.options import (
    _RUN_FLAGS,
    Inputs,
    _run_options,
    _with_flags,
    record_command,
    report,
)
from vecap_cli.errors import VecapError
from vecap_cli.stream.runner import StreamOptions

SUMMARY = "MetaCLIP curation: metadata substring matching, then balancing."
_MATCH = "Matching"
_BALANCE = "Balancing"


class _CurateGroup(TyperGroup):
    """Dispatches to `run` when the first argument is not a command name."""

    default = "run"

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = [self.default, *args]
        return super().parse_args(ctx, args)

    def collect_usage_pieces(self, ctx):
        return ["[run] [INPUT]... [OPTIONS] | COMMAND [ARGS]..."]


curate_app = typer.Typer(
    cls=_CurateGroup,
    no_args_is_help=True,
    help=f"{SUMMARY}\n\n"
    "`vecap curate INPUT... --metadata M` runs `vecap curate run`: it counts how many "
    "records match each metadata entry, then keeps a record when any matched entry "
    "passes its draw with p_e = min(1, t / count_e). For a pool spread over many "
    "workers, run `count` per shard, `count --merge` the counts, then `balance` each "
    "shard: the same records are kept.\n\n"
    "See `vecap curate COMMAND --help` for each command's flags.",
)

Metadata = Annotated[
    str,
    typer.Option(
        metavar="FILE",
        help="Entries to match: a JSON list of strings (MetaCLIP's metadata.json) or one "
        "entry per line. An entry's id is its index.",
        rich_help_panel=_MATCH,
        show_default=False,
    ),
]
Field = Annotated[str, typer.Option(help="The record field matched.", rich_help_panel=_MATCH)]
Html = Annotated[
    bool,
    typer.Option(
        "--html",
        help="Strip HTML tags and unescape entities before matching (MetaCLIP does not).",
        rich_help_panel=_MATCH,
    ),
]
TextFilter = Annotated[
    bool,
    typer.Option(
        "--text-filter",
        help="Drop texts of 2 words or fewer, or 5 characters or fewer "
        "(DataComp's basic filter), under `text-filter`.",
        rich_help_panel=_MATCH,
    ),
]
Dedup = Annotated[
    str | None,
    typer.Option(
        metavar="url,text",
        help="Drop exact duplicates after the first, by url and/or case- and "
        "space-normalized text, under `duplicate-url` / `duplicate-text` "
        "(within one process).",
        rich_help_panel=_MATCH,
        show_default=False,
    ),
]
T = Annotated[
    int,
    typer.Option(
        "--t",
        min=1,
        help="Balancing threshold: entries matched by more than t records are "
        "sub-sampled to t (MetaCLIP: 20k for 400M, 170k for 2.5B).",
        rich_help_panel=_BALANCE,
    ),
]
KeepAll = Annotated[
    bool,
    typer.Option(
        "--keep-all",
        help="Write every record, marked with curate.keep, instead of dropping "
        "under `balance` and `no-match`.",
        rich_help_panel=_BALANCE,
    ),
]


def _config(field, html, text_filter, dedup, t, seed, keep_all):
    from vecap_cli.steps.curate import CurateConfig

    kinds = tuple(k.strip() for k in dedup.split(",")) if dedup else ()
    try:
        return CurateConfig(field, html, text_filter, kinds, t, seed, keep_all)
    except ValueError as err:
        raise typer.BadParameter(str(err), param_hint="--dedup") from None


def _load(path: str, log):
    from vecap_cli.steps.curate import Matcher, read_metadata

    metadata = read_metadata(path)
    if not metadata.entries:
        log(f"warning: '{path}' has no entries: nothing can match")
    return metadata, Matcher(metadata.entries)


@contextmanager
def _replayable_stdin(inputs: tuple[str, ...]):
    """The one-pass reads its inputs twice; stdin is copied to a temporary file first,
    and `rewind()` makes it stdin again (names and relative paths stay as for '-')."""
    if "-" not in inputs:
        yield lambda: None
        return
    import shutil
    import tempfile
    from types import SimpleNamespace

    original = sys.stdin
    with tempfile.TemporaryFile(prefix="vecap-curate-") as copy:
        shutil.copyfileobj(sys.stdin.buffer, copy, 1 << 20)

        def rewind() -> None:
            copy.seek(0)
            sys.stdin = SimpleNamespace(buffer=copy)  # the stream core reads sys.stdin.buffer

        rewind()
        try:
            yield rewind
        finally:
            sys.stdin = original


def _count_pass(inputs, tally, config, metadata, matcher, rank, world_size, opts, cache=None):
    """Reads the inputs once and returns their EntryCounts; `cache` records the decisions."""
    from vecap_cli.steps.curate import Accumulator, count, prepare
    from vecap_cli.stream.progress import progress
    from vecap_cli.stream.runner import iter_samples

    accumulator = Accumulator(len(metadata.entries))
    samples = iter_samples(inputs, tally, rank=rank, world_size=world_size, log=opts.log)
    # counted from the cache at the end when there is one, else as matched
    match = matcher if cache is not None else accumulator.recording(matcher)
    with progress(f"{tally.command} (counting)", not opts.quiet) as update:
        if not opts.quiet and sys.stderr.isatty():
            samples = _updating(samples, tally, update)
        records, matched = count(prepare(samples, tally, config, match, cache), tally)
    if cache is not None:
        accumulator.add_all(cache.ids)
    return accumulator.result(metadata.sha256, config.matching(), records, matched)


def _updating(samples, tally, update):
    for n, sample in enumerate(samples):
        if not n & 1023:
            update(tally.n_in, tally.n_out)
        yield sample


def _balance_pass(command, opts: StreamOptions, config, metadata, counts, decide, started):
    """The record pass: `curate` on every record, the kept ones (or all) written.

    `decide(samples, tally)` filters and matches: `prepare`, or a cache's replay.
    """
    import hashlib

    import orjson

    from vecap_cli.steps.curate import Balancer, balance, entry_probabilities, head_tail
    from vecap_cli.stream.runner import run_stream

    balancer = Balancer(entry_probabilities(counts.counts, config.t), config.seed)
    summary = {
        "metadata": {"sha256": metadata.sha256, "entries": len(metadata.entries)},
        "t": config.t,
        **head_tail(counts.counts, config.t),
    }

    def stage(samples, tally):
        tally.started = started  # the run's time includes its counting pass
        tally.extra["curate"] = summary
        yield from balance(decide(samples, tally), tally, config, balancer)

    counts_id = hashlib.sha1(orjson.dumps(counts.counts)).hexdigest()
    return run_stream(command, opts, stage, (config, metadata.sha256, counts_id))


@curate_app.command("run")
@record_command("curate")
def run(
    metadata: Metadata,
    field: Field = "alt",
    html: Html = False,
    text_filter: TextFilter = False,
    dedup: Dedup = None,
    t: T = 20_000,
    keep_all: KeepAll = False,
    save_counts: Annotated[
        str | None,
        typer.Option(
            metavar="FILE.json",
            help="Also write the entry counts (as `vecap curate count` does).",
            rich_help_panel=_BALANCE,
            show_default=False,
        ),
    ] = None,
    *,
    opts: StreamOptions,
) -> None:
    """Curate in one pass (the default command): count entries, then balance.

    Writes `curate: {entries, p, keep}` on each record: the sorted ids of the
    matched entries, the keep probability 1 - prod(1 - p_e), and the draw.
    Records matching nothing are dropped under `no-match`, records the draws
    reject under `balance` (--keep-all writes them with keep: false).

    The inputs are read twice (stdin is buffered to a temporary file; a pipe:
    input runs twice); matches are kept in memory between the passes (about 9
    bytes per record and 4 per match). With --world-size, every rank counts the
    whole input and balances its share; for a large pool use count, count
    --merge and balance.
    """
    from vecap_cli.steps.curate import MatchCache, prepare, write_counts
    from vecap_cli.stream.tally import Tally

    config = _config(field, html, text_filter, dedup, t, opts.seed, keep_all)
    meta, matcher = _load(metadata, opts.log)
    with _replayable_stdin(opts.inputs) as rewind:
        # One worker replays its own decisions; several decide again for their
        # share, as the counting pass numbered the whole input, not the share.
        cache = MatchCache() if opts.world_size == 1 else None
        first = Tally("curate", strict=opts.strict)
        counts = _count_pass(opts.inputs, first, config, meta, matcher, 0, 1, opts, cache)
        if save_counts:
            write_counts(save_counts, counts)
        cleaned = first.extra.get("html_cleaned")

        def decide(samples, tally):
            if cache is None:
                return prepare(samples, tally, config, matcher)
            if cleaned is not None:
                tally.extra["html_cleaned"] = cleaned
            return cache.replaying(samples, tally, config)

        rewind()
        tally = _balance_pass("curate", opts, config, meta, counts, decide, first.started)
    if opts.world_size == 1 and tally.n_in != first.n_in:
        raise VecapError(
            f"the input changed between the two passes ({first.n_in:,} then {tally.n_in:,} records)"
        )
    report(tally, opts)


_COUNT_FLAGS = {name: flag for name, flag in _RUN_FLAGS.items() if name != "seed"}


@curate_app.command("count")
@_with_flags(_COUNT_FLAGS, _run_options, "curate count")
def count_entries(
    inputs: Inputs = None,
    metadata: Annotated[
        str | None,
        typer.Option(
            metavar="FILE",
            help="Entries to match (a JSON list of strings, or one per line).",
            rich_help_panel=_MATCH,
            show_default=False,
        ),
    ] = None,
    output: Annotated[
        str,
        typer.Option(
            "--output",
            "-o",
            metavar="FILE.json",
            help="The counts file; - for stdout. Several ranks write FILE.rankR.json.",
        ),
    ] = "-",
    field: Field = "alt",
    html: Html = False,
    text_filter: TextFilter = False,
    dedup: Dedup = None,
    merge: Annotated[
        bool,
        typer.Option("--merge", help="Add up the counts files given as inputs instead."),
    ] = False,
    *,
    opts,
) -> None:
    """Count how many records match each metadata entry (a pass that shards).

    A record counts once for each entry it matches. The counts file names the
    metadata it was counted with (a hash), so `balance` refuses counts of another
    entry list; `count --merge a.json b.json -o all.json` adds counts up.
    """
    if merge:
        return _merge(inputs, output, opts)
    if metadata is None:
        raise typer.BadParameter("is required (or --merge)", param_hint="--metadata")
    from vecap_cli.steps.curate import head_tail, write_counts
    from vecap_cli.stream.runner import per_rank, write_stats
    from vecap_cli.stream.sinks import open_for_writing
    from vecap_cli.stream.tally import Tally

    config = _config(field, html, text_filter, dedup, 1, 0, False)
    meta, matcher = _load(metadata, opts.log)
    rejects = None
    if opts.rejects:
        rejects = open_for_writing(per_rank(opts.rejects, opts.rank, opts.world_size))
    tally = Tally("curate count", rejects=rejects, strict=opts.strict)
    inputs = tuple(inputs or ["-"])
    try:
        counts = _count_pass(inputs, tally, config, meta, matcher, opts.rank, opts.world_size, opts)
    finally:
        if rejects is not None:
            rejects.close()
    write_counts(output if output == "-" else per_rank(output, opts.rank, opts.world_size), counts)
    if opts.stats:
        split = head_tail(counts.counts, 1)
        tally.extra["curate"] = {
            "metadata": {"sha256": meta.sha256, "entries": len(meta.entries)},
            "entries_matched": split["entries_matched"],
            "matches": split["matches"],
        }
        write_stats(per_rank(opts.stats, opts.rank, opts.world_size), tally)
    report(tally, opts)


def _merge(inputs: list[str] | None, output: str, opts) -> None:
    from vecap_cli.steps.curate import merge, write_counts

    if not inputs:
        raise typer.BadParameter("name the counts files to merge", param_hint="--merge")
    merged = merge(inputs)
    write_counts(output, merged)
    opts.log(f"merged {len(inputs)} files: {merged.records:,} records, {merged.matched:,} matched")


@curate_app.command("balance")
@record_command("curate balance")
def balance_records(
    metadata: Metadata,
    counts: Annotated[
        str,
        typer.Option(
            metavar="FILE.json",
            help="Entry counts over the whole pool (`vecap curate count`, merged).",
            rich_help_panel=_BALANCE,
            show_default=False,
        ),
    ],
    field: Field = "alt",
    html: Html = False,
    text_filter: TextFilter = False,
    dedup: Dedup = None,
    t: T = 20_000,
    keep_all: KeepAll = False,
    *,
    opts: StreamOptions,
) -> None:
    """Balance records against entry counts: the second pass of a sharded curation.

    Each record's draws derive from hash(seed, key, entry), so balancing the
    shards separately keeps exactly the records a one-pass run keeps. Writes
    `curate: {entries, p, keep}` as `vecap curate run` does.
    """
    from vecap_cli.steps.curate import prepare, read_counts

    config = _config(field, html, text_filter, dedup, t, opts.seed, keep_all)
    entry_counts = read_counts(counts)
    meta, matcher = _load(metadata, opts.log)
    if entry_counts.metadata_sha != meta.sha256 or entry_counts.n_entries != len(meta.entries):
        raise VecapError(
            f"'{counts}' was counted with another metadata list than '{metadata}' "
            f"({entry_counts.n_entries:,} entries, sha256 {entry_counts.metadata_sha[:12]}...)"
        )
    if entry_counts.matching != config.matching():
        opts.log(
            f"warning: '{counts}' was counted with other matching settings: "
            f"{entry_counts.matching} (now {config.matching()})"
        )

    def decide(samples, tally):
        return prepare(samples, tally, config, matcher)

    tally = _balance_pass(
        "curate balance", opts, config, meta, entry_counts, decide, time.monotonic()
    )
    report(tally, opts)


@curate_app.command("report")
def report_counts(
    counts: Annotated[
        str, typer.Argument(metavar="COUNTS", help="A counts file (`vecap curate count`).")
    ],
    t: T = 20_000,
    metadata: Annotated[
        str | None,
        typer.Option(
            metavar="FILE", help="The metadata, to name the top entries.", show_default=False
        ),
    ] = None,
    plot: Annotated[
        str | None,
        typer.Option(
            metavar="FILE.png",
            help="Where to draw the log-log plot of entry counts; default: COUNTS with .png.",
            show_default=False,
        ),
    ] = None,
    no_plot: Annotated[bool, typer.Option("--no-plot", help="Print only.")] = False,
    top: Annotated[int, typer.Option(min=0, help="How many top entries to list.")] = 20,
) -> None:
    """Print the distribution of entry counts and draw it (log-log, t marked)."""
    from vecap_cli.steps.curate import read_counts, read_metadata
    from vecap_cli.steps.curate.report import describe
    from vecap_cli.steps.curate.report import plot as draw

    entry_counts = read_counts(counts)
    entries = None
    if metadata is not None:
        meta = read_metadata(metadata)
        if meta.sha256 != entry_counts.metadata_sha:
            raise VecapError(f"'{counts}' was counted with another metadata list than '{metadata}'")
        entries = meta.entries
    print(describe(entry_counts, t, entries, top))
    if not no_plot:
        path = plot or _png_beside(counts)
        try:
            draw(entry_counts, t, path)
        except OSError as err:
            raise VecapError(f"cannot write '{path}': {err.strerror}") from None
        print(f"\nplot: {path}")


def _png_beside(path: str) -> str:
    for suffix in (".json.gz", ".json", ".gz"):
        if path.endswith(suffix):
            return path[: -len(suffix)] + ".png"
    return path + ".png"


@curate_app.command("metadata")
def build_metadata(
    output: Annotated[
        str,
        typer.Option(
            "--output",
            "-o",
            metavar="FILE",
            help="FILE.json: a JSON list (MetaCLIP's format); other names: one entry per "
            "line; - (default): a JSON list on stdout.",
        ),
    ] = "-",
    wordnet: Annotated[
        str,
        typer.Option(
            metavar="DIR",
            help="A WordNet dict folder (data.noun, data.verb, ...): Debian's wordnet-base.",
        ),
    ] = "/usr/share/wordnet",
    no_wordnet: Annotated[bool, typer.Option("--no-wordnet", help="Leave WordNet out.")] = False,
    corpus: Annotated[
        list[str] | None,
        typer.Option(
            metavar="FILE",
            help="Text to count unigrams and bigrams over, one document per line "
            "(.gz read too; - for stdin; repeatable). MetaCLIP used English Wikipedia.",
            show_default=False,
        ),
    ] = None,
    min_count: Annotated[
        int, typer.Option(min=1, help="Keep corpus unigrams counted at least this often.")
    ] = 100,
    min_pmi: Annotated[
        float, typer.Option(help="Keep corpus bigrams with at least this PMI (log2).")
    ] = 30.0,
    min_bigram_count: Annotated[
        int,
        typer.Option(min=1, help="Ignore bigrams seen fewer times (PMI favours rare pairs)."),
    ] = 1,
    titles: Annotated[
        str | None,
        typer.Option(
            metavar="FILE",
            help="Titles to add, one per line ('_' read as a space).",
            show_default=False,
        ),
    ] = None,
    max_entries: Annotated[int, typer.Option(min=1, help="Stop at this many entries.")] = 500_000,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No summary on stderr.")] = False,
) -> None:
    """Build a metadata list as MetaCLIP did.

    In order, until --max-entries: "0".."99"; WordNet synset names (the first
    lemma, lowercased, cut at its first '.', '_' -> ' ', all parts of speech);
    corpus unigrams (count >= --min-count) by frequency; corpus bigrams
    (PMI >= --min-pmi) by PMI; titles. Duplicates, empty and single-punctuation
    entries are skipped.
    """
    from vecap_cli.cli.options import log as make_log
    from vecap_cli.steps.curate import metadata as md
    from vecap_cli.steps.curate.matching import can_match

    log = make_log(quiet, "curate metadata")
    sources = []
    if not no_wordnet:
        sources.append(("wordnet", list(md.wordnet_names(wordnet))))
    if corpus:
        unigrams, bigrams = md.corpus_ngrams(
            _text_lines(corpus), min_count, min_pmi, min_bigram_count
        )
        sources += [("unigrams", unigrams), ("bigrams", bigrams)]
    if titles:
        sources.append(("titles", md.titles(_text_lines([titles]))))
    entries, added = md.build(sources, max_entries)
    _write_bytes(output, md.metadata_bytes(output, entries))
    parts = ", ".join(f"{name} {n:,}" for name, n in added.items())
    log(f"{len(entries):,} entries ({parts})")
    dead = sum(not can_match(e) for e in entries)
    if dead:
        log(f"note: {dead:,} entries hold punctuation that MetaCLIP's matching never matches")


def _text_lines(paths: list[str]):
    import gzip

    for path in paths:
        try:
            if path == "-":
                f = sys.stdin
            elif path.endswith(".gz"):
                f = gzip.open(path, "rt", encoding="utf-8", errors="replace")
            else:
                f = open(path, encoding="utf-8", errors="replace")
        except OSError as err:
            raise VecapError(f"cannot read '{path}': {err.strerror}") from None
        try:
            yield from f
        except (OSError, EOFError) as err:
            raise VecapError(f"cannot read '{path}': {err}") from None
        finally:
            if f is not sys.stdin:
                f.close()


def _write_bytes(path: str, data: bytes) -> None:
    import os

    from vecap_cli.stream.sinks import open_for_writing

    if path == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    with open_for_writing(f"{path}.tmp", shown=path) as f:
        f.write(data)
    os.replace(f"{path}.tmp", path)


def register(app: typer.Typer) -> None:
    app.add_typer(curate_app, name="curate", short_help=SUMMARY)
