"""CLIP's softmax InfoNCE loss, computed tile by tile: no B×B tensor ever exists.

The chain, imports going down:

    FusedClipLoss                 open_clip's ClipLoss interface, gathers across ranks
    clip_loss, clip_loss_local    functional: one process / one rank's local loss
    _SymmetricClip, _RowClip      autograd.Functions: the loss algebra, O(B·D) saved
    kernels                       `clip_triton` (CUDA) or `TorchKernels` below (CPU)

`clip_loss_reference` is the plain B×B formula, the oracle of the tests.

Notation. For rows X (m, D) and columns Y (n, D), S = s·X·Yᵀ and row i's label
is column i + offset. A kernel set provides

    lse(X, Y, s, cols)                 log-sum-exp of S along rows (and columns)
    grad(X, Y, s, lse_x, lse_y, w, k)  (G·Y, Gᵀ·X, Σ G∘X·Yᵀ) for
                                       G = exp(S − lse_x) + exp(S − lse_y) − w·onehot

and G is ∂loss/∂S up to a scalar for both forms of the loss: the symmetric one
(rows and columns of one matrix, w = 2) and the row-only one (w = 1).

`logit_bias`: softmax is shift-invariant, so a bias added to every logit changes
neither the loss nor any gradient. It is accepted for open_clip's signature and
receives an exact zero gradient.
"""

from __future__ import annotations

from types import ModuleType

import torch
import torch.nn.functional as F
from torch import nn

from vecap_cli.core.distributed import gather_features
from vecap_cli.core.tiles import as_scale, check_features, pick_kernels, row_chunks

# -- reference -------------------------------------------------------------------


def clip_loss_reference(image_features, text_features, logit_scale, logit_bias=None):
    """open_clip's single-process ClipLoss, written out: builds the full (B, B) logits."""
    logits = logit_scale * image_features @ text_features.T  # (B, B)
    if logit_bias is not None:
        logits = logits + logit_bias
    labels = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


# -- tiled torch kernels (CPU path, fallback) -------------------------------------


def _label_probs(s, lse_x, lse_y):
    """exp(S − lse_x) + exp(S − lse_y) for the present terms; consumes s."""
    if lse_x is not None and lse_y is not None:
        g = torch.exp(s - lse_x[:, None])
        return g.add_(s.sub_(lse_y).exp_())
    if lse_x is not None:
        return s.sub_(lse_x[:, None]).exp_()
    return s.sub_(lse_y).exp_()


class TorchKernels:
    """The kernel set in torch: chunks of rows of S, fp32, recomputed in backward."""

    @staticmethod
    def lse(x, y, scale, cols: bool, rows: int = 0):
        """`rows`: rows of S per chunk, 0 as many as fit in tiles.TILE_ELEMENTS."""
        x, y = x.float(), y.float()  # (m, D), (n, D)
        lse_rows = x.new_empty(x.shape[0])  # (m,)
        col_max = x.new_full((y.shape[0],), float("-inf"))  # (n,) running max
        col_sum = x.new_zeros(y.shape[0])  # (n,) running sum of exp(S - col_max)
        for start, stop in row_chunks(x.shape[0], y.shape[0], rows):
            s = (x[start:stop] * scale) @ y.T  # (c, n)
            lse_rows[start:stop] = torch.logsumexp(s, dim=1)
            if cols:
                new_max = torch.maximum(col_max, s.amax(dim=0))
                col_sum.mul_((col_max - new_max).exp_()).add_(s.sub_(new_max).exp_().sum(dim=0))
                col_max = new_max
        return lse_rows, (col_max + col_sum.log()) if cols else None

    @staticmethod
    def grad(x, y, scale, lse_x, lse_y, label_weight: float, offset: int):
        x, y = x.float(), y.float()
        gx = torch.empty_like(x)  # (m, D)
        gy = torch.zeros_like(y)  # (n, D)
        for start, stop in row_chunks(x.shape[0], y.shape[0]):
            xc = x[start:stop]  # (c, D)
            s = (xc * scale) @ y.T  # (c, n)
            g = _label_probs(s, None if lse_x is None else lse_x[start:stop], lse_y)
            g.diagonal(start + offset).sub_(label_weight)  # row r's label: column start+r+offset
            torch.mm(g, y, out=gx[start:stop])
            gy.addmm_(g.T, xc)
        return gx, gy, (x * gx).sum()  # gx is fp32 here, so Σ X∘(G·Y) is exact enough


def _kernels(features: torch.Tensor, backend: str | None) -> type[TorchKernels] | ModuleType:
    return pick_kernels(features, backend, "vecap_cli.core.clip_triton", TorchKernels)


# -- autograd ---------------------------------------------------------------------


def _rowdot(a, b):
    return (a.float() * b.float()).sum(dim=1)  # (m,)


class _SymmetricClip(torch.autograd.Function):
    """½(mean CE over rows + mean CE over columns) of S = s·I·Tᵀ, diagonal labels."""

    @staticmethod
    def forward(ctx, image, text, scale, kernels):
        with torch.autocast(image.device.type, enabled=False):
            lse_r, lse_c = kernels.lse(image, text, scale, cols=True)  # (B,), (B,)
            pos = _rowdot(image, text).sum()  # Σ_i I_i·T_i
            loss = (lse_r.sum() + lse_c.sum() - 2 * scale * pos) / (2 * image.shape[0])
        ctx.save_for_backward(image, text, scale, lse_r, lse_c)
        ctx.kernels = kernels
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        image, text, scale, lse_r, lse_c = ctx.saved_tensors
        with torch.autocast(image.device.type, enabled=False):
            gi, gt, gdot = ctx.kernels.grad(image, text, scale, lse_r, lse_c, 2.0, 0)  # (B, D) fp32
            w = grad_loss.float() / (2 * image.shape[0])
            d_scale = w * gdot
            d_image, d_text = (w * scale) * gi, (w * scale) * gt
        return d_image.to(image.dtype), d_text.to(text.dtype), d_scale, None


class _RowClip(torch.autograd.Function):
    """Mean CE of rows X (m, D) against columns Y (n, D); row i's label is column offset+i."""

    @staticmethod
    def forward(ctx, rows, cols, scale, offset, kernels):
        m = rows.shape[0]
        with torch.autocast(rows.device.type, enabled=False):
            lse, _ = kernels.lse(rows, cols, scale, cols=False)  # (m,)
            pos = _rowdot(rows, cols[offset : offset + m]).sum()
            loss = (lse.sum() - scale * pos) / m
        ctx.save_for_backward(rows, cols, scale, lse)
        ctx.kernels, ctx.offset = kernels, offset
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        rows, cols, scale, lse = ctx.saved_tensors
        with torch.autocast(rows.device.type, enabled=False):
            gx, gy, gdot = ctx.kernels.grad(rows, cols, scale, lse, None, 1.0, ctx.offset)
            w = grad_loss.float() / rows.shape[0]
            d_scale = w * gdot
            d_rows, d_cols = (w * scale) * gx, (w * scale) * gy
        return d_rows.to(rows.dtype), d_cols.to(cols.dtype), d_scale, None, None


# -- functional -------------------------------------------------------------------


def _with_zero_bias_grad(loss, logit_bias):
    if isinstance(logit_bias, torch.Tensor):
        return loss + 0.0 * logit_bias.float().sum()
    return loss


def clip_loss(image_features, text_features, logit_scale, logit_bias=None, *, backend=None):
    """open_clip's ClipLoss in one process, tiled: ½(CE(S) + CE(Sᵀ)), S = logit_scale·I·Tᵀ.

    image_features, text_features: (B, D), fp32/bf16/fp16 (accumulated in fp32).
    logit_scale: already exponentiated, as open_clip passes it. Returns a 0-dim
    fp32 loss. `backend` ("torch" | "triton") overrides dispatch.
    """
    check_features(image_features, text_features)
    if image_features.shape[0] != text_features.shape[0]:
        raise ValueError("clip_loss needs as many images as texts")
    kernels = _kernels(image_features, backend)
    scale = as_scale(logit_scale, image_features)
    loss = _SymmetricClip.apply(image_features, text_features, scale, kernels)
    return _with_zero_bias_grad(loss, logit_bias)


def clip_loss_local(
    image_features,
    text_features,
    all_image_features,
    all_text_features,
    logit_scale,
    logit_bias=None,
    *,
    label_offset: int,
    backend=None,
):
    """One rank's loss in open_clip's `local_loss=True` form.

    This rank's b rows against all ranks' gathered columns (world·b, D); row i's
    label is column label_offset + i (open_clip: b·rank). Gather with
    `distributed.all_gather_with_grad` for gradients to reach other ranks.
    """
    check_features(image_features, all_text_features)
    b = image_features.shape[0]
    if label_offset + b > all_text_features.shape[0]:
        raise ValueError("label_offset + local batch exceeds the gathered batch")
    kernels = _kernels(image_features, backend)
    scale = as_scale(logit_scale, image_features)
    per_image = _RowClip.apply(image_features, all_text_features, scale, label_offset, kernels)
    per_text = _RowClip.apply(text_features, all_image_features, scale, label_offset, kernels)
    return _with_zero_bias_grad((per_image + per_text) / 2, logit_bias)


# -- module -----------------------------------------------------------------------


class FusedClipLoss(nn.Module):
    """Drop-in for open_clip's `ClipLoss` (same constructor and forward), O(B·D) memory.

    `cache_labels` is accepted and unused: no label tensor is built. Horovod is
    not supported.
    """

    def __init__(
        self,
        local_loss=False,
        gather_with_grad=False,
        cache_labels=False,
        rank=0,
        world_size=1,
        use_horovod=False,
        backend: str | None = None,
    ):
        super().__init__()
        if use_horovod:
            raise NotImplementedError("FusedClipLoss gathers with torch.distributed only")
        self.local_loss = local_loss
        self.gather_with_grad = gather_with_grad
        self.cache_labels = cache_labels
        self.rank = rank
        self.world_size = world_size
        self.backend = backend

    def forward(
        self, image_features, text_features, logit_scale, logit_bias=None, output_dict=False
    ):
        loss = self._loss(image_features, text_features, logit_scale, logit_bias)
        return {"contrastive_loss": loss} if output_dict else loss

    def _loss(self, image_features, text_features, logit_scale, logit_bias):
        if self.world_size == 1:
            return clip_loss(
                image_features, text_features, logit_scale, logit_bias, backend=self.backend
            )
        all_images, all_texts = gather_features(
            image_features,
            text_features,
            local_loss=self.local_loss,
            gather_with_grad=self.gather_with_grad,
            rank=self.rank,
            world_size=self.world_size,
        )
        if not self.local_loss:
            return clip_loss(all_images, all_texts, logit_scale, logit_bias, backend=self.backend)
        return clip_loss_local(
            image_features,
            text_features,
            all_images,
            all_texts,
            logit_scale,
            logit_bias,
            label_offset=image_features.shape[0] * self.rank,
            backend=self.backend,
        )
