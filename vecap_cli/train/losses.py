"""The training objective: one module from a model's output dict to named losses.

The contrastive part is the core's fused loss (same values and gradients as
open_clip's, without the B×B logits), or on request (`fused=False`) open_clip's
own ClipLoss / SigLipLoss. CoCa adds its captioning loss. With --distill,
MobileCLIP's objective: (1 − λ)·contrastive + λ·distill, the second the core's
`distill_loss` against the batch's stored teacher embeddings. Across ranks every
form uses the local-loss layout with gradients through the gather, which makes
the DDP-averaged gradient that of the whole global batch. With `positives` K > 1
(`--positives`) the contrastive part is the core's multi-positive loss; open_clip
has none, and CoCa's caption loss wants one caption per image: both refused.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vecap_cli.errors import VecapError
from vecap_cli.train.contrastive import LOSSES, Classes


def contrastive_loss(
    kind: str, *, rank: int, world_size: int, fused: bool, positives: int = 1
) -> nn.Module:
    """--loss `kind` (see contrastive.py), a ClipLoss- or SigLipLoss-shaped module:
    forward(img, txt, logit_scale, logit_bias); `fused`: the core's, else open_clip's.
    `positives` K: texts (B·K, D), image i's K captions at rows i·K … i·K + K − 1."""
    if fused:
        from vecap_cli.core import FusedClipLoss as ClipLoss
        from vecap_cli.core import FusedMultiPosClipLoss, FusedMultiPosSigLipLoss
        from vecap_cli.core import FusedSigLipLoss as SigLipLoss

        classes = Classes(ClipLoss, SigLipLoss, FusedMultiPosClipLoss, FusedMultiPosSigLipLoss)
    else:
        if positives > 1:
            raise VecapError(
                f"--positives {positives}: open_clip's losses take one caption per image; "
                "the multi-positive loss is the core's (fused) one"
            )
        from open_clip.loss import ClipLoss, SigLipLoss

        classes = Classes(ClipLoss, SigLipLoss)
    return LOSSES[kind].build(classes, rank, world_size, positives)


class TrainLoss(nn.Module):
    """model(images, texts) output → {'contrastive_loss': …[, 'caption_loss': …]}."""

    def __init__(
        self,
        contrastive: nn.Module,
        contrastive_weight: float = 1.0,
        caption_weight: float = 0.0,
        pad_id: int = 0,  # open_clip's tokenizer pads with 0
        distill: nn.Module | None = None,  # a FusedDistillClipLoss
        distill_weight: float = 0.0,
        teacher_scale: float = 100.0,
    ):
        super().__init__()
        self.distill = distill
        self.distill_weight = distill_weight
        self.teacher_scale = teacher_scale
        self.contrastive = contrastive
        self.contrastive_weight = contrastive_weight
        self.caption_weight = caption_weight
        self.pad_id = pad_id

    @property
    def fused(self) -> bool:
        """Whether the contrastive part runs on the core's kernels (--stats says which ran)."""
        from vecap_cli.core import (
            FusedClipLoss,
            FusedMultiPosClipLoss,
            FusedMultiPosSigLipLoss,
            FusedSigLipLoss,
        )

        fused = FusedClipLoss | FusedSigLipLoss | FusedMultiPosClipLoss | FusedMultiPosSigLipLoss
        return isinstance(self.contrastive, fused)

    def forward(self, out: dict, teacher: tuple | None = None) -> dict[str, torch.Tensor]:
        """`teacher`: (image rows, text rows) of the batch, with --distill."""
        parts = {}
        if self.contrastive_weight:
            loss = self.contrastive(
                out["image_features"],
                out["text_features"],
                out["logit_scale"],
                out.get("logit_bias"),
            )
            parts["contrastive_loss"] = self.contrastive_weight * loss
        if "logits" in out:  # CoCa: next-token prediction of the caption, teacher-forced
            logits = out["logits"].permute(0, 2, 1)  # (b, vocab, ctx-1)
            caption = F.cross_entropy(logits, out["labels"], ignore_index=self.pad_id)
            parts["caption_loss"] = self.caption_weight * caption
        if self.distill is not None:
            parts["distill_loss"] = self.distill_weight * self._distill(out, teacher)
        return parts

    def _distill(self, out: dict, teacher: tuple | None) -> torch.Tensor:
        if teacher is None:
            from vecap_cli.errors import VecapError

            raise VecapError("--distill: a batch mixes teacher embeddings of different widths")
        image, text = out["image_features"], out["text_features"]
        t_image, t_text = (t.to(image.device) for t in teacher)
        return self.distill.distillation(
            image, text, out["logit_scale"], t_image, t_text, self.teacher_scale
        )


def make_loss(
    kind: str,
    *,
    rank: int = 0,
    world_size: int = 1,
    fused: bool = True,
    coca: bool = False,
    contrastive_weight: float = 1.0,
    caption_weight: float = 2.0,
    distill_weight: float | None = None,
    teacher_scale: float = 100.0,
    positives: int = 1,
) -> TrainLoss:
    """`fused`: the core's kernels; False: open_clip's own losses (which build the B×B logits).
    `distill_weight` λ (None: no distillation) weighs the contrastive loss by 1 − λ.
    `positives`: captions per image (texts (B·K, D) grouped by image)."""
    if coca and positives > 1:
        raise VecapError(
            f"--positives {positives}: CoCa's caption loss wants one caption per image "
            "(use --positives 1 with a CoCa model)"
        )
    if distill_weight is not None and positives > 1:
        raise VecapError(
            f"--positives {positives}: --distill matches one caption per image to the "
            "teacher's (use --positives 1 with --distill)"
        )
    contrastive = contrastive_loss(
        kind, rank=rank, world_size=world_size, fused=fused, positives=positives
    )
    weights = (contrastive_weight, caption_weight) if coca else (1.0, 0.0)
    if distill_weight is None:
        return TrainLoss(contrastive, *weights)
    from vecap_cli.core import FusedDistillClipLoss

    distill = FusedDistillClipLoss(
        local_loss=True, gather_with_grad=True, rank=rank, world_size=world_size
    )
    return TrainLoss(
        contrastive, weights[0] * (1.0 - distill_weight), weights[1],
        distill=distill, distill_weight=distill_weight, teacher_scale=teacher_scale,
    )  # fmt: skip
