"""SigLIP's sigmoid loss, computed tile by tile: no B×B tensor ever exists.

The chain, imports going down:

    FusedSigLipLoss     open_clip's SigLipLoss interface (chunk_size, _loss's
                        negative_only), gathers texts across ranks
    siglip_loss         functional: rows against (possibly gathered) columns
    _SigLip             autograd.Function: the loss algebra, O(B·D) saved
    kernels             `siglip_triton` (CUDA) or `TorchKernels` below (CPU)

`siglip_loss_reference` is the plain B×B formula, the oracle of the tests.

For rows X (m, D), columns Y (n, D): S = s·X·Yᵀ + b, z = +1 on row i's label
column i + offset and −1 elsewhere, loss = Σ softplus(−z·S) / m (open_clip
normalises by the local batch). With T = z·σ(−z·S), ∂loss/∂S = −T/m, so a
kernel set provides

    loss_rows(X, Y, s, b, k)  Σ_j softplus(−z·S) per row
    grad(X, Y, s, b, k)       (T·Y, Tᵀ·X, Σ T∘(X·Yᵀ), Σ T)
"""

from __future__ import annotations

from types import ModuleType

import torch
import torch.nn.functional as F
from torch import nn

from vecap_cli.core.distributed import all_gather_with_grad
from vecap_cli.core.tiles import as_scale, check_features, pick_kernels, row_chunks

_DIST_IMPLS = ("bidir", "shift", "reduce", "gather")


# -- reference -------------------------------------------------------------------


def siglip_loss_reference(
    image_features, text_features, logit_scale, logit_bias=None, label_offset=0, negative_only=False
):
    """open_clip's SigLipLoss._loss written out, with labels shifted by label_offset."""
    logits = logit_scale * image_features @ text_features.T  # (m, n)
    if logit_bias is not None:
        logits = logits + logit_bias
    signs = -torch.ones_like(logits)
    if not negative_only:
        signs.diagonal(label_offset).fill_(1.0)
    return -F.logsigmoid(signs * logits).sum() / image_features.shape[0]


# -- tiled torch kernels (CPU path, fallback) -------------------------------------


class TorchKernels:
    """The kernel set in torch: chunks of rows of S, fp32, recomputed in backward.

    `rows`: rows of S held at once (open_clip's `chunk_size`); 0 picks them so a
    chunk is at most `tiles.TILE_ELEMENTS` elements.
    """

    def __init__(self, rows: int = 0):
        self.rows = rows

    def loss_rows(self, x, y, scale, bias, offset: int):
        x, y = x.float(), y.float()
        out = x.new_empty(x.shape[0])  # (m,)
        for start, stop in row_chunks(x.shape[0], y.shape[0], self.rows):
            u = _minus_z_logits(x[start:stop], y, scale, bias, start + offset)
            out[start:stop] = F.softplus(u).sum(dim=1)
        return out

    def grad(self, x, y, scale, bias, offset: int):
        x, y = x.float(), y.float()
        gx = torch.empty_like(x)  # (m, D)
        gy = torch.zeros_like(y)  # (n, D)
        gsum = x.new_zeros(())
        for start, stop in row_chunks(x.shape[0], y.shape[0], self.rows):
            xc = x[start:stop]
            t = _minus_z_logits(xc, y, scale, bias, start + offset).sigmoid_()
            t.neg_().diagonal(start + offset).neg_()  # T = z·σ(u): −σ off the labels
            torch.mm(t, y, out=gx[start:stop])
            gy.addmm_(t.T, xc)
            gsum += t.sum()
        return gx, gy, (x * gx).sum(), gsum


def _minus_z_logits(xc, y, scale, bias, label_diagonal):
    """u = −z·S for a chunk of rows: S off the labels, −S on them. (c, n)

    A label diagonal at or past n (the negative-only form) is empty: z = −1 everywhere.
    """
    u = (xc * scale) @ y.T
    u += bias
    u.diagonal(label_diagonal).neg_()
    return u


def _kernels(
    features: torch.Tensor, backend: str | None, chunk_size: int = 0
) -> TorchKernels | ModuleType:
    return pick_kernels(features, backend, "vecap_cli.core.siglip_triton", TorchKernels(chunk_size))


# -- autograd ---------------------------------------------------------------------


class _SigLip(torch.autograd.Function):
    @staticmethod
    def forward(ctx, rows, cols, scale, bias, offset, kernels):
        ctx.save_for_backward(rows, cols, scale, bias)  # inputs only: backward recomputes S
        ctx.kernels, ctx.offset = kernels, offset
        with torch.autocast(rows.device.type, enabled=False):
            return kernels.loss_rows(rows, cols, scale, bias, offset).sum() / rows.shape[0]

    @staticmethod
    def backward(ctx, grad_loss):
        rows, cols, scale, bias = ctx.saved_tensors
        with torch.autocast(rows.device.type, enabled=False):
            gx, gy, gdot, gsum = ctx.kernels.grad(rows, cols, scale, bias, ctx.offset)
            w = -grad_loss.float() / rows.shape[0]  # ∂loss/∂S = −T/m
            d_rows, d_cols = (w * scale) * gx, (w * scale) * gy
        return d_rows.to(rows.dtype), d_cols.to(cols.dtype), w * gdot, w * gsum, None, None


# -- functional -------------------------------------------------------------------


def siglip_loss(
    image_features,
    text_features,
    logit_scale,
    logit_bias=None,
    *,
    label_offset=0,
    negative_only=False,
    chunk_size=0,
    backend=None,
):
    """Σ_ij softplus(−z_ij·S_ij) / m for S = logit_scale·I·Tᵀ + logit_bias.

    image_features: (m, D) this rank's rows. text_features: (n, D), the same
    batch (n = m) or all ranks' gathered texts, row i's positive being text
    label_offset + i (with offset 0 and m ≠ n, the pairs on the diagonal, as
    open_clip's `_loss`); `negative_only`: no positives at all (z = −1 everywhere,
    open_clip's form for another rank's texts). fp32/bf16/fp16, accumulated in
    fp32; logit_scale already exponentiated. Returns a 0-dim fp32 loss.
    `chunk_size`: rows of S the torch path holds at once (0: automatic, at most
    32 MiB); the Triton kernels tile on their own. `backend` overrides dispatch.
    """
    check_features(image_features, text_features)
    if chunk_size < 0:
        raise ValueError(f"chunk_size must be >= 0, got {chunk_size}")
    if negative_only:
        label_offset = text_features.shape[0]  # every label column lies past the last one
    elif label_offset and label_offset + image_features.shape[0] > text_features.shape[0]:
        # (offset 0 with m ≠ n is open_clip's rectangular `_loss`: positives on the diagonal)
        raise ValueError("label_offset + batch exceeds the number of texts")
    kernels = _kernels(image_features, backend, chunk_size)
    scale = as_scale(logit_scale, image_features)
    bias = as_scale(0.0 if logit_bias is None else logit_bias, image_features)
    return _SigLip.apply(image_features, text_features, scale, bias, label_offset, kernels)


# -- module -----------------------------------------------------------------------


class FusedSigLipLoss(nn.Module):
    """Drop-in for open_clip's `SigLipLoss` (same constructor, forward and `_loss`),
    O(B·D) memory.

    Across ranks the texts are all-gathered with gradient; every `dist_impl`
    gives the values and gradients of open_clip's (they differ there only in
    how texts travel). `cache_labels` is accepted and unused. `chunk_size`, as in
    open_clip's newer SigLipLoss: rows of the logits held at once on the torch
    path (0: automatic); values and gradients do not depend on it.
    """

    def __init__(
        self,
        cache_labels=False,
        rank=0,
        world_size=1,
        dist_impl=None,
        chunk_size=0,
        backend=None,
    ):
        super().__init__()
        self.cache_labels = cache_labels
        self.rank = rank
        self.world_size = world_size
        self.dist_impl = dist_impl or "bidir"
        if self.dist_impl not in _DIST_IMPLS:
            raise ValueError(f"dist_impl must be one of {_DIST_IMPLS}, got {dist_impl!r}")
        if chunk_size is None or chunk_size < 0:
            raise ValueError(f"chunk_size must be an int >= 0, got {chunk_size!r}")
        self.chunk_size = chunk_size
        self.backend = backend

    def _loss(
        self, image_features, text_features, logit_scale, logit_bias=None, negative_only=False
    ):
        """One block: rows against texts, the diagonal positive unless `negative_only`."""
        return siglip_loss(
            image_features,
            text_features,
            logit_scale,
            logit_bias,
            negative_only=negative_only,
            chunk_size=self.chunk_size,
            backend=self.backend,
        )

    def forward(self, image_features, text_features, logit_scale, logit_bias, output_dict=False):
        offset = 0
        if self.world_size > 1:
            text_features = all_gather_with_grad(text_features)  # (world·b, D)
            offset = image_features.shape[0] * self.rank
        loss = siglip_loss(
            image_features,
            text_features,
            logit_scale,
            logit_bias,
            label_offset=offset,
            chunk_size=self.chunk_size,
            backend=self.backend,
        )
        return {"contrastive_loss": loss} if output_dict else loss
