"""The attention `vecap train --attn` names: each mode is written here, once.

A mode prepares a built model's attention, given the core's patch
(`use_fused_attention`, or None in a build without it), and says what runs.
The CLI's choices and help and TrainConfig's check are built from ATTENTION;
this module loads no torch, so `vecap train --help` stays light.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from vecap_cli.errors import VecapError

if TYPE_CHECKING:
    from torch import nn

Patch = Callable[["nn.Module"], object]  # the core's use_fused_attention(model)


@dataclass(frozen=True)
class Mode:
    help: str  # a few words for --help
    apply: Callable[[nn.Module, Patch | None], str]  # (model, patch) -> what runs


def _fused(model: nn.Module, patch: Patch | None) -> str:
    if patch is None:
        raise VecapError("--attn fused: fused attention is not available in this build")
    patch(model)
    return "fused"


def _sdpa(model: nn.Module, patch: Patch | None) -> str:
    return "sdpa"  # open_clip's modules, as built


def _auto(model: nn.Module, patch: Patch | None) -> str:
    return _sdpa(model, patch) if patch is None else _fused(model, patch)


ATTENTION: dict[str, Mode] = {
    "auto": Mode("fused when built", _auto),
    "fused": Mode("the core's kernel", _fused),
    "sdpa": Mode("open_clip's own", _sdpa),
}
