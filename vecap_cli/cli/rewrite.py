"""vecap rewrite: fuse AltText and VeC into one caption (VeCap)."""

from enum import StrEnum
from typing import Annotated

import typer

from vecap_cli.cli import generation as g
from vecap_cli.cli.options import record_command, report
from vecap_cli.stream.runner import StreamOptions


class Backend(StrEnum):
    rules = "rules"
    hf = "hf"
    openai = "openai"


@record_command("rewrite")
def rewrite(
    backend: Annotated[
        Backend | None,
        typer.Option(
            help="rules: model-free fusion (the default without --model); hf: a transformers "
            "causal LM (the default with --model); openai: a chat-completions server.",
            rich_help_panel=g._MODEL,
            show_default=False,
        ),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            help="hf: a transformers model dir (or hub id); openai: the served model name.",
            rich_help_panel=g._MODEL,
            show_default=False,
        ),
    ] = None,
    prompt_file: Annotated[
        str | None,
        typer.Option(
            metavar="FILE",
            help="Replace the fusion prompt: a template naming {alt} and {vec}, which become "
            "quoted strings; sent as one user message.",
            rich_help_panel=g._MODEL,
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
    max_new_tokens: g.MaxNewTokens = 77,
    batch_size: g.BatchSize = None,
    min_words: Annotated[
        int, typer.Option(min=1, help="Shortest accepted LLM answer, in words.")
    ] = 3,
    max_words: Annotated[
        int, typer.Option(min=1, help="Longest accepted LLM answer, in words.")
    ] = 60,
    device: g.Device = "auto",
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Rewrite records that already have a `vecap` too.")
    ] = False,
    trust_remote_code: g.TrustRemoteCode = False,
    api_base: g.ApiBase = g.DEFAULT_API_BASE,
    api_key_env: g.ApiKeyEnv = "OPENAI_API_KEY",
    concurrency: g.Concurrency = 16,
    retries: g.Retries = 5,
    timeout: g.Timeout = 120.0,
    max_reply_bytes: g.MaxReplyBytes = g.DEFAULT_MAX_REPLY_BYTES,
    *,
    opts: StreamOptions,
) -> None:
    """Fuse each record's AltText and VeC into one caption: the VeCap, in `vecap`.

    An LLM keeps the AltText's knowledge (names, places, models, dates) and adds
    the VeC's visual concepts, in one sentence; the AltText enters the prompt as
    quoted data, so instructions inside it are not followed. An AltText that
    hits --blocklist is not fused (VeCap = VeC). An answer that is not one
    caption of --min-words..--max-words words, echoes the prompt or refuses,
    holds a URL, an e-mail address or instruction-like text that the AltText
    and VeC do not, control characters or over 16 characters per
    --max-new-tokens, and a request that fails, fall back to VeCap = VeC. The rules backend needs
    no model: it cleans the AltText (HTML, URLs, file names, shop boilerplate,
    sizes, SKU codes) and appends the named things the VeC lacks. Records
    without `vec` pass through without `vecap`; records that already have one
    pass untouched unless --overwrite. Every case is counted in --stats.
    """
    from functools import partial

    from vecap_cli.steps.rewrite import RewriteConfig
    from vecap_cli.steps.rewrite import rewrite as rewrite_stage
    from vecap_cli.steps.rewrite.build import build_rewriter
    from vecap_cli.stream.runner import run_stream

    try:
        config = RewriteConfig.of(
            backend and backend.value,
            model,
            batch_size,
            concurrency,
            prompt_file=prompt_file,
            blocklist=blocklist,
            max_new_tokens=max_new_tokens,
            min_words=min_words,
            max_words=max_words,
            overwrite=overwrite,
        )
    except ValueError as err:
        raise typer.BadParameter(str(err), param_hint="--model") from None
    server = None
    if config.backend == "openai":
        server = g.server_spec(
            config.model,
            max_new_tokens,
            api_base,
            api_key_env,
            concurrency,
            retries,
            timeout,
            max_reply_bytes,
        )
    rewriter = build_rewriter(config, device, server, trust_remote_code)
    tally = run_stream(
        "rewrite", opts, partial(rewrite_stage, config=config, rewriter=rewriter), config.identity()
    )
    report(tally, opts)


def register(app) -> None:
    app.command("rewrite")(rewrite)
