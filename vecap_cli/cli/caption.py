"""vecap caption: visual-concept captions (VeC) from a vision-language model."""

from enum import StrEnum
from typing import Annotated

import typer

from vecap_cli.cli import generation as g
from vecap_cli.cli.options import record_command, report
from vecap_cli.stream.runner import StreamOptions


class Backend(StrEnum):
    hf = "hf"
    openclip = "openclip"
    openai = "openai"


@record_command("caption")
def caption(
    model: Annotated[
        str,
        typer.Option(
            help="hf: a transformers model dir (or hub id); openclip: an open_clip model name, "
            "hf-hub:ORG/REPO or local-dir:PATH; openai: the served model name.",
            rich_help_panel=g._MODEL,
            show_default=False,
        ),
    ],
    backend: Annotated[
        Backend,
        typer.Option(
            help="hf: transformers image-text-to-text models (LLaVA, BLIP, BLIP-2, Qwen2-VL...); "
            "openclip: a CoCa checkpoint; openai: a chat-completions server.",
            rich_help_panel=g._MODEL,
        ),
    ] = Backend.hf,
    pretrained: Annotated[
        str | None,
        typer.Option(
            help="openclip: a pretrained tag or checkpoint file for --model.",
            rich_help_panel=g._MODEL,
            show_default=False,
        ),
    ] = None,
    prompt: Annotated[
        str,
        typer.Option(
            help="The instruction beside each image (VeCLIP's by default); BLIP, which follows no instructions, captions without it.",
            rich_help_panel=g._MODEL,
        ),
    ] = "Describe the image concisely, less than 20 words.",
    max_new_tokens: g.MaxNewTokens = 40,
    batch_size: g.BatchSize = None,
    workers: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="Threads decoding images ahead of the model (default: up to 4; 0: inline).",
            rich_help_panel=g._MODEL,
            show_default=False,
        ),
    ] = None,
    device: g.Device = "auto",
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Caption records that already have a `vec` too.")
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
    """Caption every image with a vision-language model: the VeC, in `vec`.

    Images come from the tar members or the `image` paths of JSONL records and
    are decoded in worker threads ahead of the model; generation is greedy, in
    batches, bf16 on a GPU. Records that already have a `vec` pass through
    untouched unless --overwrite. An image that cannot be read or decoded is
    rejected (image-missing, image-not-file, image-too-large, image-too-many-pixels,
    bad-image); with --backend openai, a request that still fails after its
    retries is rejected as caption-REASON. An answer is data, not trusted: one
    holding a URL, an e-mail address or instruction-like text (ignore previous
    instructions, visit, click...) that the prompt does not, control characters,
    or over 16 characters per --max-new-tokens, is rejected (caption-url,
    caption-email, caption-instruction, caption-control-chars, caption-too-long,
    empty-caption), never written.
    """
    from functools import partial

    from vecap_cli.generate.load import captioner as load_captioner
    from vecap_cli.steps.caption import CaptionConfig
    from vecap_cli.steps.caption import caption as caption_stage
    from vecap_cli.stream.runner import run_stream

    name = backend.value
    config = CaptionConfig.of(
        name,
        batch_size,
        workers,
        concurrency,
        model=model,
        pretrained=pretrained,
        prompt=prompt,
        max_new_tokens=max_new_tokens,
        overwrite=overwrite,
        image_limits=opts.image_limits,
    )
    server = None
    if name == "openai":
        server = g.server_spec(
            model,
            max_new_tokens,
            api_base,
            api_key_env,
            concurrency,
            retries,
            timeout,
            max_reply_bytes,
        )
    model_backend = load_captioner(
        name,
        model,
        prompt,
        max_new_tokens,
        device=device,
        pretrained=pretrained,
        server=server,
        trust_remote_code=trust_remote_code,
        limits=opts.image_limits,
    )
    stage = partial(caption_stage, config=config, captioner=model_backend)
    tally = run_stream("caption", opts, stage, config.identity())
    report(tally, opts)


def register(app) -> None:
    app.command("caption")(caption)
