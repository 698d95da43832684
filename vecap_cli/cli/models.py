"""The flags that name a CLIP model as `vecap eval` loads it (eval/models.py), declared
once for the commands that embed with one: eval, filter score and filter dedup."""

from typing import Annotated

import typer

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


Pretrained = Annotated[str | None, pretrained_option()]
Tokenizer = Annotated[str | None, tokenizer_option()]
