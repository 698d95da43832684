"""vecap rewrite: fuse AltText and VeC into one caption (VeCap)."""

from typing import Annotated

import typer

from vecap_cli.cli import generation as g
from vecap_cli.cli.options import report
from vecap_cli.generate.registry import REWRITE, ModelOptions
from vecap_cli.steps.rewrite.prompt import STYLES
from vecap_cli.stream.runner import StreamOptions


@g.generation_command(REWRITE)
def rewrite(
    backend: Annotated[  # choices and help: the backends' (generation.py)
        str | None, g.model_flag(show_default=False)
    ] = None,
    model: Annotated[str | None, g.model_flag(show_default=False)] = None,  # help: the backends'
    prompt_file: Annotated[
        str | None,
        g.model_flag(
            "Replace the fusion prompt: a template naming {alt} and {vec}, which become "
            "quoted strings; sent as one user message.",
            metavar="FILE",
            show_default=False,
        ),
    ] = None,
    blocklist: Annotated[
        str,
        typer.Option(
            metavar="FILE",
            help="Terms (one a line) that keep an AltText out of fusion: VeCap = VeC. "
            "'default': a small list shipped with vecap; 'none': no check.",
        ),
    ] = "default",
    style: Annotated[str, g.style_flag(STYLES, "The fusion prompt")] = "default",
    max_new_tokens: Annotated[int | None, g.max_new_tokens_flag(STYLES)] = None,
    n: Annotated[int, g.n_flag("vecap", "Fusions")] = 1,
    temperature: g.Temperature = 0.0,
    batch_size: g.BatchSize = None,
    min_words: Annotated[
        int, typer.Option(min=1, help="Shortest accepted LLM answer, in words.")
    ] = 3,
    max_words: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Longest accepted LLM answer, in words "
            f"(default: {g.by_style(STYLES, lambda s: s.max_words)}).",
            show_default=False,
        ),
    ] = None,
    overwrite: Annotated[bool, g.overwrite_flag("Rewrite", "vecap")] = False,
    *,
    options: ModelOptions,
    opts: StreamOptions,
) -> None:
    """Fuse each record's AltText and VeC into one caption: the VeCap, in `vecap`.

    An LLM keeps the AltText's knowledge (names, places, models, dates) and
    adds the VeC's visual concepts, in one sentence; the AltText enters the
    prompt as quoted data, so instructions inside it are not followed. An
    AltText that hits --blocklist is not fused (VeCap = VeC). An answer that
    is not one caption of --min-words..--max-words words, echoes the prompt
    or refuses, holds a URL, an e-mail address or instruction-like text that
    the AltText and VeC do not, control characters or over 16 characters per
    --max-new-tokens, and a request that fails, fall back to VeCap = VeC.
    The rules backend needs no model: it cleans the AltText (HTML, URLs,
    file names, shop boilerplate, sizes, SKU codes) and appends the named
    things the VeC lacks. --style asks the LLM for one short sentence or a
    dense description instead. With --n K and --temperature T, K fusions are
    sampled per record and `vecap` holds their JSON list; draw i fuses the
    AltText with VeC i (mod their count) where `vec` is a list (caption
    --n), and falls back to that VeC. Records without `vec` pass through
    without `vecap`; records that already have one pass untouched unless
    --overwrite. Every case is counted in --stats. --workers N runs N
    processes, each with its own server client (--concurrency requests
    each), cache connection or CPU model; one model on a GPU runs in one
    process (one task per GPU: vecap launch).
    """
    flags = g.config_fields(locals())
    from functools import partial

    from vecap_cli.steps.generation import staged
    from vecap_cli.steps.rewrite import RewriteConfig
    from vecap_cli.steps.rewrite import rewrite as rewrite_stage
    from vecap_cli.steps.rewrite.build import build_rewriter
    from vecap_cli.stream.runner import run_stream

    try:
        config = RewriteConfig.of(concurrency=options.concurrency, seed=opts.seed, **flags)
    except ValueError as err:
        hint = "--model" if "--model" in str(err) else "--n"
        raise typer.BadParameter(str(err), param_hint=hint) from None

    def build():
        return partial(rewrite_stage, config=config, rewriter=build_rewriter(config, options))

    stage, records = staged(REWRITE, config, options, opts.workers, build)
    tally = run_stream("rewrite", opts, stage, config.identity(), batch_records=records)
    report(tally, opts)


def register(app) -> None:
    app.command("rewrite")(rewrite)
