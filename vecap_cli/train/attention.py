"""The attention `vecap train --attn` names: each mode is written here, once.

A mode prepares a built model's attention and says what runs. The CLI's choices
and help and TrainConfig's check are built from ATTENTION; this module loads no
torch, so `vecap train --help` stays light.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class Mode:
    help: str  # a few words for --help
    apply: Callable[[nn.Module], str]  # model -> what runs


def _fused(model: nn.Module) -> str:
    from vecap_cli.core import use_fused_attention  # loads open_clip's transformer

    use_fused_attention(model)
    return "fused"


def _sdpa(model: nn.Module) -> str:
    return "sdpa"  # open_clip's modules, as built


ATTENTION: dict[str, Mode] = {
    "auto": Mode("the default, fused", _fused),
    "fused": Mode("the core's kernel", _fused),
    "sdpa": Mode("open_clip's own", _sdpa),
}
