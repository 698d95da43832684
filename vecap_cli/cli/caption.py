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
    condition_on: Annotated[
        str | None,
        g.model_flag(
            "Condition the caption on this field too (typically alt): it goes into the prompt "
            "as quoted data (one JSON string, at most 500 characters, no control characters), "
            "and the answer, a caption keeping the names and numbers the image supports, "
            "goes to `vecap`; `vec` is left as it is. A record without a non-blank string "
            "there (a list: its first) is rejected (condition-missing). Needs a backend "
            "that reads a prompt: hf (not BLIP) or openai.",
            metavar="FIELD",
            show_default=False,
        ),
    ] = None,
    prompt_file: Annotated[
        str | None,
        g.model_flag(
            "Read the prompt from FILE instead of --prompt; with --condition-on, a template "
            "naming {alt}, which becomes the quoted text (default: vecap's, "
            "vecap_cli/steps/condition.txt).",
            metavar="FILE",
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
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite",
            help="Caption records that already have a `vec` (with --condition-on: a `vecap`) too.",
        ),
    ] = False,
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

    With --condition-on alt, one pass writes the VeCap (Altogether, MetaCLIP 1.2):
    the model sees the image and the AltText, quoted as data it is told not to
    obey, and keeps the AltText's names and numbers where the image supports
    them. The answer is checked against the prompt without the AltText, so a
    URL or an order that only the AltText holds is rejected, not copied.
    """
    flags = g.config_fields(locals())
    from functools import partial

    from vecap_cli.steps.caption import CaptionConfig, build_captioner
    from vecap_cli.steps.caption import caption as caption_stage
    from vecap_cli.steps.condition import PromptError, resolve_prompt
    from vecap_cli.steps.generation import staged
    from vecap_cli.stream.runner import run_stream

    try:
        style_prompt = CAPTION_STYLES[flags["style"]].prompt
        if condition_on is not None and flags["style"] != "default":
            raise PromptError(
                "--style picks an unconditioned prompt; with --condition-on give --prompt-file",
                "--style",
            )
        given = flags["prompt"]
        flags["prompt"] = resolve_prompt(
            style_prompt if given is None else given,
            flags.pop("prompt_file"),
            condition_on,
            style_prompt,
        )
        config = CaptionConfig.of(
            concurrency=options.concurrency,
            processes=opts.workers,
            image_limits=opts.image_limits,
            seed=opts.seed,
            **flags,
        )
    except PromptError as err:
        raise typer.BadParameter(str(err), param_hint=err.flag) from None
    except ValueError as err:
        on = condition_on is not None and ("record field" in str(err) or "no prompt" in str(err))
        hint = "--condition-on" if on else "--n"
        raise typer.BadParameter(str(err), param_hint=hint) from None

    def build():
        return partial(caption_stage, config=config, captioner=build_captioner(config, options))

    stage, records = staged(CAPTION, config, options, opts.workers, build)
    tally = run_stream("caption", opts, stage, config.identity(), batch_records=records)
    report(tally, opts)


def register(app) -> None:
    app.command("caption")(caption)
