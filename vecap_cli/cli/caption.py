"""vecap caption: visual-concept captions (VeC) from a vision-language model."""

from typing import Annotated

import typer

from vecap_cli.cli import generation as g
from vecap_cli.cli.options import report
from vecap_cli.generate.registry import CAPTION, ModelOptions
from vecap_cli.steps.generation import CAPTION_STYLES
from vecap_cli.stream.runner import StreamOptions


@g.generation_command(CAPTION)
def caption(
    model: Annotated[str, g.model_flag(show_default=False)],  # help: the backends' (generation.py)
    backend: Annotated[str, g.model_flag()] = "hf",  # choices and help: the backends'
    pretrained: Annotated[
        str | None,
        g.model_flag(
            "openclip: a pretrained tag or checkpoint file for --model.", show_default=False
        ),
    ] = None,
    prompt: Annotated[
        str | None,
        g.model_flag(
            "The instruction beside each image, in place of --style's; BLIP, which "
            "follows no instructions, captions without it.",
            show_default=False,
        ),
    ] = None,
    style: Annotated[str, g.style_flag(CAPTION_STYLES, "The prompt")] = "default",
    max_new_tokens: Annotated[int | None, g.max_new_tokens_flag(CAPTION_STYLES)] = None,
    n: Annotated[int, g.n_flag("vec", "Captions")] = 1,
    temperature: g.Temperature = 0.0,
    batch_size: g.BatchSize = None,
    decode_threads: Annotated[
        int | None,
        g.model_flag(
            "Threads decoding images ahead of the model, in each --workers process "
            "(default: up to 4, the cores shared between the processes; 0: inline).",
            min=0,
            show_default=False,
        ),
    ] = None,
    overwrite: Annotated[bool, g.overwrite_flag("Caption", "vec")] = False,
    *,
    options: ModelOptions,
    opts: StreamOptions,
) -> None:
    """Caption every image with a vision-language model: the VeC, in `vec`.

    Images come from the tar members or the `image` paths of JSONL records
    and are decoded in threads ahead of the model; generation is greedy, in
    batches, bf16 on a GPU. --style picks the prompt: VeCLIP's, short or
    dense. With --n K and --temperature T, K captions are sampled per image,
    each seeded from (--seed, key, i), and `vec` holds their JSON list; a
    draw refused as below is left out of it (counted in caption-draws), and
    a record is rejected when none is left or a draw's request failed.
    --workers N runs N processes, each with its own server client
    (--concurrency requests each), cache connection or CPU model; one model
    on a GPU runs in one process (one task per GPU: vecap launch). Records
    that already have a `vec` pass through untouched unless --overwrite. An
    image that cannot be read or decoded is rejected (image-missing,
    image-not-file, image-too-large, image-too-many-pixels, bad-image); with
    --backend openai, a request that still fails after its retries is
    rejected as caption-REASON. An answer is data, not trusted: one holding
    a URL, an e-mail address or instruction-like text (ignore previous
    instructions, visit, click...) that the prompt does not, control
    characters, or over 16 characters per --max-new-tokens, is rejected
    (caption-url, caption-email, caption-instruction, caption-control-chars,
    caption-too-long, empty-caption), never written.
    """
    flags = g.config_fields(locals())
    from functools import partial

    from vecap_cli.steps.caption import CaptionConfig, build_captioner
    from vecap_cli.steps.caption import caption as caption_stage
    from vecap_cli.steps.generation import staged
    from vecap_cli.stream.runner import run_stream

    try:
        config = CaptionConfig.of(
            concurrency=options.concurrency,
            processes=opts.workers,
            image_limits=opts.image_limits,
            seed=opts.seed,
            **flags,
        )
    except ValueError as err:
        raise typer.BadParameter(str(err), param_hint="--n") from None

    def build():
        return partial(caption_stage, config=config, captioner=build_captioner(config, options))

    stage, records = staged(CAPTION, config, options, opts.workers, build)
    tally = run_stream("caption", opts, stage, config.identity(), batch_records=records)
    report(tally, opts)


def register(app) -> None:
    app.command("caption")(caption)
