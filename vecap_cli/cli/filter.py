"""vecap filter: keep records by a model's score (one pass, or two that shard); drop
duplicate images.

    vecap filter [score] INPUT... --model M       filter.clip_score on every record
    vecap filter select INPUT... --keep-fraction F --histogram H[,H...]
    vecap filter dedup INPUT... --exact --phash-distance D  (cli/filter_dedup.py)

The group sends `vecap filter ARGS` to `score` unless ARGS starts with a command
name (cli/groups.py).
"""

from typing import Annotated

import typer

from vecap_cli.cli import filter_dedup
from vecap_cli.cli.groups import DefaultCommandGroup
from vecap_cli.cli.models import (
    MODEL,
    Pretrained,
    Tokenizer,
    device_option,
    image_batch_option,
    model_option,
)
from vecap_cli.cli.options import finite, record_command, report
from vecap_cli.stream.runner import StreamOptions

SUMMARY = (
    "Filter by a CLIP model's image-text score and DataComp's basic rules; deduplicate images."
)
_MODEL = MODEL
_RULES = "Rules"


class _FilterGroup(DefaultCommandGroup):
    default = "score"


filter_app = typer.Typer(
    cls=_FilterGroup,
    no_args_is_help=True,
    help=f"{SUMMARY}\n\n"
    "`vecap filter INPUT... --model M` runs `vecap filter score`: it writes "
    "filter.clip_score, the cosine of the image and text embeddings, on every record "
    "(DataComp's CLIP score; a DFN-style filter network is the same computation with "
    "its own model), and drops records under --min-score and the basic rules. For the "
    "top fraction of a pool (DataComp's top 30%), `score --histogram H` on each shard "
    "or rank, then `select --keep-fraction F --histogram H...`: the same threshold "
    "everywhere. `vecap filter dedup` drops exact, perceptual (pHash) and semantic "
    "(SemDeDup) duplicate images, each drop naming the record it duplicates.\n\n"
    "See `vecap filter COMMAND --help` for each command's flags.",
)


@filter_app.command("score")
@record_command("filter score")
def score(
    model: Annotated[str, model_option()],
    pretrained: Pretrained = None,
    tokenizer: Tokenizer = None,
    text_key: Annotated[
        str,
        typer.Option(
            help="The field scored against the image; records without it are rejected, "
            "`no-text`, and those where it is a list (caption/rewrite --n), `text-list`.",
            rich_help_panel=_MODEL,
        ),
    ] = "alt",
    batch_size: Annotated[int, image_batch_option()] = 64,
    device: Annotated[str, device_option(_MODEL)] = "auto",
    decode_threads: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="Threads decoding images ahead of the model (default: up to 4; 0: inline).",
            rich_help_panel=_MODEL,
            show_default=False,
        ),
    ] = None,
    min_score: Annotated[
        float | None,
        typer.Option(
            callback=finite,
            help="Drop records scoring below this, under `clip-score-below` (DataComp's "
            "threshold baseline: 0.3 with OpenAI's ViT-L/14).",
            rich_help_panel=_RULES,
            show_default=False,
        ),
    ] = None,
    min_side: Annotated[
        int,
        typer.Option(
            min=0,
            metavar="PX",
            help="Drop images whose smaller side is under PX pixels, under `image-too-small` "
            "(DataComp's basic filter: 200).",
            rich_help_panel=_RULES,
        ),
    ] = 0,
    max_aspect: Annotated[
        float | None,
        typer.Option(
            min=1.0,
            callback=finite,
            metavar="R",
            help="Drop images whose longer side is over R times the shorter, under "
            "`aspect-ratio` (DataComp's basic filter: 3).",
            rich_help_panel=_RULES,
            show_default=False,
        ),
    ] = None,
    text_filter: Annotated[
        bool,
        typer.Option(
            "--text-filter",
            help="Drop texts of 2 words or fewer, or 5 characters or fewer (DataComp's "
            "basic caption filter), under `text-filter`.",
            rich_help_panel=_RULES,
        ),
    ] = False,
    histogram: Annotated[
        str | None,
        typer.Option(
            metavar="FILE.json",
            help="Write the scores written, counted in 2^16 bins over [-1, 1], for "
            "`vecap filter select`; one file per rank (FILE.rankR.json) as --stats.",
            show_default=False,
        ),
    ] = None,
    *,
    opts: StreamOptions,
) -> None:
    """Write filter.clip_score on every record (the default command).

    The score is the cosine of the L2-normalized image and text (--text-key)
    embeddings, computed as `vecap eval` embeds: the same model loading and
    preprocessing, in batches, on the GPU when there is one. A record meets its
    text first (`no-text` rejected, `text-list` for a list of captions from
    caption/rewrite --n; --text-filter), then its image (rejected
    when it cannot be read or decoded: image-missing, image-not-file,
    image-too-large, image-too-many-pixels, bad-image; --min-side, --max-aspect
    on the image's own size), then its score (--min-score). A record whose
    `filter` field is not an object is rejected, `filter-not-object`. The model
    runs in this process alone: there is no --workers; for more throughput,
    split the input over ranks (--rank/--world-size), each with its GPU.
    """
    from functools import partial

    from vecap_cli.steps.filter.rules import BasicRules
    from vecap_cli.steps.filter.score import ClipScorer, ScoreConfig, default_threads
    from vecap_cli.steps.filter.score import score as score_stage

    config = ScoreConfig(
        model=model,
        pretrained=pretrained,
        tokenizer=tokenizer,
        text_key=text_key,
        min_score=min_score,
        rules=BasicRules(min_side, max_aspect, text_filter),
        batch_size=batch_size,
        threads=default_threads() if decode_threads is None else decode_threads,
        device=device,
        image_limits=opts.image_limits,
    )
    load = partial(ClipScorer, config, opts, opts.seed, opts.log)
    stage = partial(score_stage, config=config, load=load)
    tally = _run(
        "filter score", opts, stage, config.identity(), partial(_histogram, histogram, config)
    )
    report(tally, opts)


def _histogram(path: str | None, config, tally, opts: StreamOptions) -> None:
    """The histogram the stage counted in the tally: out of --stats, into its own
    file (one per rank)."""
    from vecap_cli.steps.filter.histogram import Histogram
    from vecap_cli.steps.filter.score import HISTOGRAM
    from vecap_cli.stream.runner import per_rank
    from vecap_cli.stream.sinks import write_atomically

    counts = tally.extra.pop(HISTOGRAM, {})
    tally.extra["scored"] = sum(counts.values())
    if path is not None:
        hist = Histogram.from_counts(counts, model=config.model_name())
        write_atomically(per_rank(path, opts.rank, opts.world_size), hist.to_json())


def _run(command: str, opts: StreamOptions, stage, identity, finish):
    """run_stream, then `finish(tally, opts)` before --stats is written."""
    import dataclasses

    from vecap_cli.stream.runner import per_rank, run_stream, write_stats

    tally = run_stream(command, dataclasses.replace(opts, stats=None), stage, identity)
    finish(tally, opts)
    if opts.stats:
        write_stats(per_rank(opts.stats, opts.rank, opts.world_size), tally)
    return tally


def _fraction(value: float) -> float:
    if not 0.0 < value <= 1.0:
        raise typer.BadParameter(f"expected a fraction in (0, 1], got {value}")
    return value


@filter_app.command("select")
@record_command("filter select")
def select(
    keep_fraction: Annotated[
        float,
        typer.Option(
            callback=_fraction,
            metavar="F",
            help="Keep this top fraction of the scored pool (DataComp's CLIP-score "
            "baseline: 0.3); the rest is dropped under `below-keep-fraction`.",
            show_default=False,
        ),
    ],
    histogram: Annotated[
        str,
        typer.Option(
            metavar="FILE[,FILE...]",
            help="The histograms `vecap filter score --histogram` wrote, one per rank "
            "(a glob: 'hist.rank*.json'), added up into the pool's.",
            show_default=False,
        ),
    ],
    *,
    opts: StreamOptions,
) -> None:
    """Keep the records scoring in the top --keep-fraction of the whole pool.

    The threshold is global: the histograms of every rank's scores are added
    up, and the k = ceil(F x N) highest scores of the N counted set it. A
    record is kept when its filter.clip_score falls in the threshold's bin
    (2^16 bins over [-1, 1]) or above: exactly the k records a sort keeps when
    scores are distinct at that resolution; records tied with the k-th score
    (or within its bin) are all kept, so ties can keep a few more, never
    fewer. Records without a score are rejected, `no-score`.
    """
    from functools import partial

    from vecap_cli.steps.filter import histogram as hist
    from vecap_cli.steps.filter.select import select as select_stage

    merged, files = hist.merged(p.strip() for p in histogram.split(",") if p.strip())
    threshold, k = merged.threshold(keep_fraction)
    edge = hist.lower_edge(threshold) if threshold < hist.BINS else float("inf")
    opts.log(
        f"{len(files)} histogram(s), {merged.n:,} scores: the top {keep_fraction:g} is "
        f"{k:,}, kept at filter.clip_score >= {edge:.5f} (bin {threshold})"
    )
    stage = partial(select_stage, threshold_bin=threshold)
    found = {"threshold": edge if threshold < hist.BINS else None, "threshold_bin": threshold,
             "pool": merged.n, "target": k}  # fmt: skip
    tally = _run(
        "filter select", opts, stage, (merged.model, threshold), lambda t, _: t.extra.update(found)
    )
    report(tally, opts)


filter_dedup.register(filter_app)  # after score and select: --help lists them in this order


def register(app: typer.Typer) -> None:
    app.add_typer(filter_app, name="filter", short_help=SUMMARY)
