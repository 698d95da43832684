"""The models vecap trains: any open_clip architecture, plus tiny built-in ones.

The built-in configs (`vecap-tiny`, `vecap-tiny-coca`, `vecap-tiny-sigmoid`)
are open_clip JSON configs in `model_configs/`, registered with open_clip's
public `add_model_config`; after `register_builtin_configs()`, plain
`open_clip.create_model_and_transforms('vecap-tiny', pretrained=ckpt)` works.
They train on two CPU cores in minutes (32 px images, 2 blocks of width 64).
`vecap-tiny-sigmoid` carries SigLIP's logit bias and scale init; its name
avoids "siglip", which would make open_clip fetch a Hugging Face tokenizer.
"""

from __future__ import annotations

import difflib
import math
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from vecap_cli import positions
from vecap_cli.errors import VecapError
from vecap_cli.eval.models import saved_context_length
from vecap_cli.loading import load_error, quietly, register_builtin_configs
from vecap_cli.positions import check_context_length
from vecap_cli.train.attention import ATTENTION

LOGIT_SCALE_MAX = math.log(100)  # open_clip's clamp: temperature stays >= 0.01


@dataclass
class Bundle:
    model: nn.Module
    train_transform: Callable
    val_transform: Callable
    tokenizer: Callable  # list[str] -> (n, context_length) int64
    coca: bool
    context_length: int | None = None  # tokens the text tower reads (None: no table of its own)
    resized_from: int | None = None  # the positions the loaded weights had, when resized


def check_architecture(name: str) -> None:
    """One clear line for a name open_clip does not know."""
    import open_clip

    register_builtin_configs()
    if name.startswith(("local-dir:", "hf-hub:")):
        return
    if open_clip.get_model_config(name.replace("/", "-")) is None:
        near = difflib.get_close_matches(name, open_clip.list_models(), n=3, cutoff=0.6)
        hint = f" (did you mean {', '.join(near)}?)" if near else ""
        raise VecapError(f"--model: unknown architecture '{name}'{hint}")


def build(
    name: str,
    pretrained: str | None = None,
    *,
    seed: int = 0,
    device: str = "cpu",
    context_length: int | None = None,
) -> Bundle:
    """The model (random init from `seed`, or `pretrained`), its transforms and tokenizer.

    `context_length` L (None: the weights', else the architecture's): a fresh
    model is built with L positions; weights with another number (--pretrained,
    a `local-dir:` run) load with the positions they have and are then stretched
    to L Long-CLIP's way, or truncated (vecap_cli/positions.py).
    """
    import open_clip

    check_architecture(name)
    if context_length is not None:
        check_context_length(context_length)
    if pretrained is not None and not os.path.isfile(pretrained):
        raise VecapError(f"--pretrained: cannot read '{pretrained}': no such file")
    saved = saved_context_length(pretrained, name) if pretrained else None
    try:  # first: a tokenizer that needs the network fails before a big model is built
        with quietly():
            tokenizer = open_clip.get_tokenizer(name, context_length=context_length or saved)
    except (OSError, ValueError) as err:
        why = str(err).splitlines()[0]
        raise VecapError(f"--model {name}: its tokenizer cannot be loaded: {why}") from None
    fresh = pretrained is None and not name.startswith(("local-dir:", "hf-hub:"))
    torch.manual_seed(seed)  # every rank and every rerun starts from the same weights
    try:
        with quietly():
            model, train_tf, val_tf = open_clip.create_model_and_transforms(
                name,
                pretrained=pretrained,
                device=device,
                output_dict=True,
                weights_only=True,
                # weights load with the positions they have: open_clip would resize them
                # to the architecture's by plain interpolation; Long-CLIP's comes after
                force_context_length=context_length if fresh else saved,
            )
    except Exception as err:  # a file from anywhere: whatever pickle or torch raises is one line
        what = f"--pretrained '{pretrained}' does not load into {name}" if pretrained else name
        raise load_error(what, err) from None
    if saved is not None:
        positions.set_context_length(model, saved)  # CoCa's decoder too
    coca = isinstance(model, open_clip.CoCa)
    if coca and fresh:
        _init_caption_head(model)
    had = positions.context_length(model)
    if context_length is not None:
        positions.set_context_length(model, context_length)  # fresh: CoCa's decoder mask
    length = positions.context_length(model)
    resized = had if had != length and not fresh else None
    return Bundle(model, train_tf, val_tf, tokenizer, coca, length, resized)


def _init_caption_head(model: nn.Module) -> None:
    """open_clip 3.3 never initializes a fresh CoCa's decoder output projection (its
    `init_parameters` is never called): it holds whatever `torch.empty` found, zeros
    or garbage up to inf and NaN. Initialize it as that method would."""
    proj = model.text_decoder.text_projection
    with torch.no_grad():
        nn.init.normal_(proj, std=proj.shape[0] ** -0.5)


def set_attention(model: nn.Module, mode: str) -> str:
    """Prepares the model's attention as --attn `mode` says (see attention.py);
    returns what runs."""
    return ATTENTION[mode].apply(model)


def clamp_logit_scale(model: nn.Module) -> None:
    with torch.no_grad():
        model.logit_scale.clamp_(0, LOGIT_SCALE_MAX)
