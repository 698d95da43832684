"""The flags that name a CLIP model as `vecap eval` loads it (eval/models.py), declared
once for the commands that embed with one: eval, filter score and filter dedup."""

from typing import Annotated

import typer

from vecap_cli.positions import MAX_CONTEXT_LENGTH

MODEL = "Model"


def model_option(panel: str = MODEL) -> typer.models.OptionInfo:
    return typer.Option(
        help="Any architecture vecap train takes (vecap-tiny, ViT-B-16, a model-config "
        ".json) with --pretrained, an open_clip model directory (a vecap train run), or "
        "a Hugging Face CLIPModel directory (with its saved image processor, if any).",
        rich_help_panel=panel,
        show_default=False,
    )


def pretrained_option(panel: str = MODEL) -> typer.models.OptionInfo:
    return typer.Option(
        metavar="PATH",
        help="open_clip/vecap checkpoint for --model ARCH (RUN/step_N.pt, or an open_clip tag).",
        rich_help_panel=panel,
        show_default=False,
    )


def tokenizer_option(panel: str = MODEL) -> typer.models.OptionInfo:
    return typer.Option(
        help="Tokenizer for a Hugging Face model whose directory has none "
        "(VeCLIP checkpoints: t5-base).",
        rich_help_panel=panel,
        show_default=False,
    )


def image_batch_option(panel: str = MODEL) -> typer.models.OptionInfo:
    return typer.Option(min=1, help="Images per forward pass.", rich_help_panel=panel)


def device_option(panel: str = MODEL) -> typer.models.OptionInfo:
    return typer.Option(
        metavar="auto|cpu|cuda",
        help="torch device; auto: this rank's GPU when there is one, else cpu.",
        rich_help_panel=panel,
    )


def context_length_option(panel: str = MODEL) -> typer.models.OptionInfo:
    return typer.Option(
        min=2,
        max=MAX_CONTEXT_LENGTH,
        help="Text tokens per caption (default: what the weights were trained with, as a "
        "vecap train checkpoint records it). More stretches an open_clip model's text "
        "positions Long-CLIP's way, fewer truncates them.",
        rich_help_panel=panel,
        show_default=False,
    )


Pretrained = Annotated[str | None, pretrained_option()]
ContextLength = Annotated[int | None, context_length_option()]
Tokenizer = Annotated[str | None, tokenizer_option()]
