"""The contrastive losses `vecap train --loss` names: each name is written here, once.

A loss is a builder of a module shaped as open_clip's ClipLoss / SigLipLoss,
forward(image_features, text_features, logit_scale, logit_bias=None), for one
rank of `world_size`, with `positives` K captions per image (`--positives`:
texts (B·K, D), image i's at rows i·K … i·K + K − 1). It is handed the classes
this build trains with: the core's fused ones when the core is there, else
open_clip's, which have no multi-positive form (losses.py picks).
The CLI's choices and help and TrainConfig's check are built from LOSSES; this
module loads no torch, so `vecap train --help` stays light.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from torch import nn


class Classes(NamedTuple):
    clip: type  # ClipLoss's constructor and forward
    siglip: type  # SigLipLoss's
    # (positives, rank=, world_size=): the core's FusedMultiPos*Loss; None: none here
    multipos_clip: type | None = None
    multipos_siglip: type | None = None


@dataclass(frozen=True)
class Loss:
    help: str  # a few words for --help
    # (classes, rank, world_size, positives) -> module
    build: Callable[[Classes, int, int, int], nn.Module]


def _clip(classes: Classes, rank: int, world_size: int, positives: int = 1) -> nn.Module:
    # Each rank's loss over its own rows against the gathered batch, with gradients
    # through the gather: DDP's averaged gradient is the whole global batch's.
    if positives > 1:  # the same local-loss form, K captions per image
        return classes.multipos_clip(positives, rank=rank, world_size=world_size)
    return classes.clip(
        local_loss=True, gather_with_grad=True, cache_labels=True, rank=rank, world_size=world_size
    )


def _siglip(classes: Classes, rank: int, world_size: int, positives: int = 1) -> nn.Module:
    # open_clip's "gather" keeps gradients through the gather like _clip's; the
    # core's loss gives those values whatever dist_impl says.
    if positives > 1:
        return classes.multipos_siglip(positives, rank=rank, world_size=world_size)
    return classes.siglip(rank=rank, world_size=world_size, dist_impl="gather")


LOSSES: dict[str, Loss] = {
    "clip": Loss("softmax InfoNCE", _clip),
    "siglip": Loss("sigmoid", _siglip),
}
