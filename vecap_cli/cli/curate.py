"""vecap curate: MetaCLIP curation, in one pass or in passes that shard.

    vecap curate [run] INPUT... --metadata M        count, then balance (the default)
    vecap curate metadata -o M                      build an entry list
    vecap curate count INPUT... --metadata M        entry counts (add up with --merge)
    vecap curate balance INPUT... --metadata M --counts C
    vecap curate report C                           the distribution, and a plot

The group sends `vecap curate ARGS` to `run` unless ARGS starts with a command
name (cli/groups.py), so the one-pass reads like every other record command.
"""

import inspect
from typing import Annotated

import typer

from vecap_cli.cli.groups import DefaultCommandGroup
from vecap_cli.cli.options import (
    Inputs,
    finite,
    log,
    one_of,
    record_command,
    report,
    run_command,
)
from vecap_cli.steps.curate.matching import MATCH_RULES
from vecap_cli.steps.curate.texts import TEXTS
from vecap_cli.stream.runner import StreamOptions, output_problem

SUMMARY = "MetaCLIP curation: metadata substring matching, then balancing."
_MATCH = "Matching"
_BALANCE = "Balancing"
_TITLES = "Titles"


curate_app = typer.Typer(
    cls=DefaultCommandGroup,
    no_args_is_help=True,
    help=f"{SUMMARY}\n\n"
    "`vecap curate INPUT... --metadata M` runs `vecap curate run`: it counts how many "
    "records match each metadata entry, then keeps a record when any matched entry "
    "passes its draw with p_e = min(1, t / count_e): an entry's own draws keep about t "
    "of its records, and records kept through other entries add more. For a pool spread over many "
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
Field = Annotated[
    str,
    typer.Option(
        "--field",
        "--text-keys",
        help="The record field matched; several, comma-separated (alt,title), or a field "
        "holding a list of strings, give a record several texts: each is matched and "
        "counted, the record is kept through any of them, and one that matched is drawn "
        "(from seed and key) to train on: curate.texts, curate.chosen, curate.text.",
        rich_help_panel=_MATCH,
    ),
]
Rule = Annotated[
    str,
    typer.Option(
        "--rule",
        parser=one_of(MATCH_RULES),
        metavar=f"<{'|'.join(MATCH_RULES)}>",
        help="; ".join(f"{name}: {r.help}" for name, r in MATCH_RULES.items())
        + " With metaclip2, --metadata is a folder of LANG.json lists (MetaCLIP 2's "
        "data/metadata), curate.lang and curate.lang_conf (the language identified) and "
        "curate.list (the list matched) are written; texts in a language without a list "
        "(or none identified) are matched against other.json when the folder has one, "
        "as in MetaCLIP 2, else dropped under `no-metadata-for-lang`.",
        rich_help_panel=_MATCH,
    ),
]
TPerLang = Annotated[
    str | None,
    typer.Option(
        "--t-per-lang",
        metavar="FILE.json",
        help="With --rule metaclip2: t for the languages named in a JSON object "
        '({"ja": 12000}); other languages get the t at which their tail holds the '
        "share of matches English's holds below --t (MetaCLIP 2's p_to_t).",
        rich_help_panel=_BALANCE,
        show_default=False,
    ),
]
LangKey = Annotated[
    str | None,
    typer.Option(
        "--lang-key",
        metavar="FIELD",
        help="With --rule metaclip2: the record field that holds its texts' language "
        "(a code as the lists are named: en, ja, zh-Hant; a dotted path such as curate.lang "
        "reads a previous run's), used instead of identifying it, as MetaCLIP 2's curate.py "
        "reads `lang` from its shards; curate.lang_conf is then null. Records without it are "
        "identified; a field holding anything else is rejected under `bad-lang`.",
        rich_help_panel=_MATCH,
        show_default=False,
    ),
]
Texts = Annotated[
    str,
    typer.Option(
        "--texts",
        parser=one_of(dict.fromkeys(TEXTS)),
        metavar=f"<{'|'.join(TEXTS)}>",
        help="With several texts per record: any keeps a record with P = 1 - prod(1 - p_e) "
        "over every text's matched entries (MetaCLIP 2's paper); one first draws the text "
        "to train on (from seed and key) among those that matched and keeps the record by "
        "that text's entries alone (MetaCLIP 2's released curate.py).",
        rich_help_panel=_BALANCE,
    ),
]
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
        "(within one process: with it, --workers is 1).",
        rich_help_panel=_MATCH,
        show_default=False,
    ),
]
T = Annotated[
    int,
    typer.Option(
        "--t",
        min=1,
        help="Balancing threshold: an entry matched by more than t records draws each of "
        "them with p = t / count, so about t are kept through it; records kept through "
        "their other entries add more (a head entry keeps a median 1.4-2.1x t on 10k LAION "
        "texts). MetaCLIP: 20k for 400M, 170k for 2.5B.",
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
KeepMatched = Annotated[
    bool,
    typer.Option(
        "--keep-matched",
        help="Write every matched record with its keep probability curate.p and draw "
        "nothing (no curate.keep; `no-match` still dropped): the pool that "
        "`vecap train --online-curation` and `vecap mix --online-curation` draw from "
        "anew each epoch (MetaCLIP 1.2/2's online curation).",
        rich_help_panel=_BALANCE,
    ),
]


def _config(
    *,
    field,
    html,
    text_filter,
    dedup,
    t=1,
    seed=0,
    keep_all=False,
    keep_matched=False,
    rule="v1",
    t_per_lang=None,
    texts="any",
    lang_key=None,
):
    from vecap_cli.steps.curate import CurateConfig

    kinds = tuple(k.strip() for k in dedup.split(",")) if dedup else ()
    fixed = ()
    if t_per_lang is not None:
        if rule == "v1":
            raise typer.BadParameter("goes with --rule metaclip2", param_hint="--t-per-lang")
        from vecap_cli.steps.curate.worldwide import read_t_per_lang

        fixed = tuple(sorted(read_t_per_lang(t_per_lang).items()))
    try:
        return CurateConfig(
            field,
            html,
            text_filter,
            kinds,
            t,
            seed,
            keep_all,
            keep_matched=keep_matched,
            rule=rule,
            t_per_lang=fixed,
            texts=texts,
            lang_key=lang_key or "",
        )
    except ValueError as err:
        if keep_all and keep_matched:
            hint = "--keep-matched"
        elif "--lang-key" in str(err):
            hint = "--lang-key"
        else:
            hint = "--field" if "field" in str(err) else "--dedup"
        raise typer.BadParameter(str(err), param_hint=hint) from None


def _flags(values: dict) -> dict:
    """The flags a command passes to `_config`, picked from its `locals()` by name."""
    names = inspect.signature(_config).parameters
    return {name: value for name, value in values.items() if name in names}


@curate_app.command("run")
@record_command("curate", workers=True)
def run(
    metadata: Metadata,
    field: Field = "alt",
    html: Html = False,
    text_filter: TextFilter = False,
    dedup: Dedup = None,
    t: T = 20_000,
    keep_all: KeepAll = False,
    keep_matched: KeepMatched = False,
    rule: Rule = "v1",
    t_per_lang: TPerLang = None,
    texts: Texts = "any",
    lang_key: LangKey = None,
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
    reject under `balance` (--keep-all writes them with keep: false;
    --keep-matched writes every matched record with p and draws nothing, for
    online curation in `vecap mix` / `vecap train`).

    t is no cap on an entry: its own draws keep about t of its records, and
    records kept through their other entries count for it too.

    The inputs are read once: the records that match (with --keep-all, all)
    are held in memory until every record is counted, about 1.2 kB each for
    LAION-like records. Tar inputs (their images would be held too), files
    too big to hold in half the free memory, --resume and --world-size > 1
    read the inputs twice instead, holding 9 bytes per record and 4 per match
    (stdin is copied to a temporary file; a pipe: input runs twice); the
    output is the same. With --world-size, every rank counts the whole input
    and balances its share; for a large pool use count, count --merge and
    balance.
    """
    from vecap_cli.steps.curate import passes

    config = _config(seed=opts.seed, **_flags(locals()))
    report(passes.curate(opts, config, metadata, save_counts), opts)


@curate_app.command("count")
@run_command("curate count", omit=("seed",), images=False, workers=True)  # no image, no draw
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
    rule: Rule = "v1",
    lang_key: LangKey = None,
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
    from vecap_cli.steps.curate import passes

    if merge:
        if not inputs:
            raise typer.BadParameter("name the counts files to merge", param_hint="--merge")
        passes.merge(inputs, output, opts.log)
        return
    if metadata is None:
        raise typer.BadParameter("is required (or --merge)", param_hint="--metadata")
    config = _config(**_flags(locals()))  # counting draws nothing: no t, no seed
    stream = StreamOptions(
        inputs=tuple(inputs or ["-"]),
        output=output,
        stats=opts.stats,
        rejects=opts.rejects,
        strict=opts.strict,
        rank=opts.rank,
        world_size=opts.world_size,
        quiet=opts.quiet,
        log=opts.log,
        workers=opts.workers,
        progress=opts.progress,
    )
    problem = output_problem(stream)
    if problem:
        raise typer.BadParameter(problem)
    report(passes.count(stream, config, metadata), opts)


@curate_app.command("balance")
@record_command("curate balance", workers=True)
def balance_records(
    metadata: Metadata,
    counts: Annotated[
        str,
        typer.Option(
            metavar="FILE",
            help="Entry counts over the whole pool: `vecap curate count` (merged), or "
            "MetaCLIP's: entry_count.npy or a JSON list (one count per --metadata entry, "
            "in order), or a JSON object entry -> count (entry_counts_400m.json); with "
            "--rule metaclip2, MetaCLIP 2's .npz of counts per language.",
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
    keep_matched: KeepMatched = False,
    rule: Rule = "v1",
    t_per_lang: TPerLang = None,
    texts: Texts = "any",
    lang_key: LangKey = None,
    *,
    opts: StreamOptions,
) -> None:
    """Balance records against entry counts: the second pass of a sharded curation.

    Each record's draws derive from hash(seed, key, entry), so balancing the
    shards separately keeps exactly the records a one-pass run keeps. Writes
    `curate: {entries, p, keep}` as `vecap curate run` does.
    """
    from vecap_cli.steps.curate import passes

    config = _config(seed=opts.seed, **_flags(locals()))
    report(passes.balance(opts, config, metadata, counts), opts)


@curate_app.command("report")
def report_counts(
    counts: Annotated[
        str,
        typer.Argument(
            metavar="COUNTS",
            help="A counts file (`vecap curate count`), or MetaCLIP's (as balance --counts "
            "reads them; an entry -> count object needs --metadata).",
        ),
    ],
    t: T = 20_000,
    metadata: Annotated[
        str | None,
        typer.Option(
            metavar="FILE",
            help="The metadata, to name the top entries; a folder of lists per language "
            "(--rule metaclip2) reports each language at its own t.",
            show_default=False,
        ),
    ] = None,
    t_per_lang: TPerLang = None,
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
    """Print the distribution of entry counts and draw it (log-log, t marked).

    With --metadata a folder of lists per language (--rule metaclip2), per language:
    entries, matches, its t and its head and tail at that t."""
    from vecap_cli.steps.curate import passes

    fixed = ()
    if t_per_lang is not None:
        from vecap_cli.steps.curate.worldwide import read_t_per_lang

        fixed = tuple(sorted(read_t_per_lang(t_per_lang).items()))
    path = None if no_plot else plot or passes.png_beside(counts)
    passes.report(counts, t, metadata, top, path, t_per_lang=fixed)
    if path is not None:
        print(f"\nplot: {path}")


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
        float,
        typer.Option(callback=finite, help="Keep corpus bigrams with at least this PMI (log2)."),
    ] = 30.0,
    min_bigram_count: Annotated[
        int,
        typer.Option(min=1, help="Ignore bigrams seen fewer times (PMI favours rare pairs)."),
    ] = 1,
    titles: Annotated[
        list[str] | None,
        typer.Option(
            metavar="FILE",
            help="Titles to add (repeatable; '_' read as a space; .gz read too): Wikimedia "
            "pageview dumps (files named pageviews-*, as MetaCLIP used), a JSON object "
            "title -> views (MetaCLIP's title_counts.json), or one title per line. Titles "
            "with views are kept from --min-views, most viewed first.",
            rich_help_panel=_TITLES,
            show_default=False,
        ),
    ] = None,
    min_views: Annotated[
        int,
        typer.Option(
            min=0,
            help="Keep a title viewed at least this often over all --titles files (MetaCLIP: 70).",
            rich_help_panel=_TITLES,
        ),
    ] = 70,
    min_line_views: Annotated[
        int,
        typer.Option(
            min=0,
            help="Count a pageview line (one title's views in one hour) from this many views "
            "(MetaCLIP: 50).",
            rich_help_panel=_TITLES,
        ),
    ] = 50,
    wiki_project: Annotated[
        str,
        typer.Option(
            help="The pageview lines read: their domain code (en: English Wikipedia, desktop).",
            rich_help_panel=_TITLES,
        ),
    ] = "en",
    colon_titles: Annotated[
        bool,
        typer.Option(
            "--colon-titles",
            help="Keep titles holding ':'. MetaCLIP drops them: namespaced pages (Talk:, "
            "File:, Category:, ...) and titles such as 'Star Wars: Episode IV' alike.",
            rich_help_panel=_TITLES,
        ),
    ] = False,
    max_entries: Annotated[int, typer.Option(min=1, help="Stop at this many entries.")] = 500_000,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No summary on stderr.")] = False,
) -> None:
    """Build a metadata list as MetaCLIP did.

    In order, until --max-entries: "0".."99"; WordNet synset names (the first
    lemma, lowercased, cut at its first '.', '_' -> ' ', all parts of speech);
    corpus unigrams (count >= --min-count) by frequency; corpus bigrams
    (PMI >= --min-pmi) by PMI; titles (MetaCLIP's rule: pageview lines of at
    least --min-line-views, titles with ':' dropped, views summed, kept from
    --min-views). Duplicates, empty and single-punctuation entries are skipped.
    """
    from vecap_cli.steps.curate import passes
    from vecap_cli.steps.curate.metadata import Recipe, TitleRule

    recipe = Recipe(
        wordnet=None if no_wordnet else wordnet,
        corpus=tuple(corpus or ()),
        min_count=min_count,
        min_pmi=min_pmi,
        min_bigram_count=min_bigram_count,
        titles=tuple(titles or ()),
        title_rule=TitleRule(min_views, min_line_views, wiki_project, colon_titles),
        max_entries=max_entries,
    )
    passes.build_metadata(recipe, output, log(quiet, "curate metadata"))


def register(app: typer.Typer) -> None:
    app.add_typer(curate_app, name="curate", short_help=SUMMARY)
