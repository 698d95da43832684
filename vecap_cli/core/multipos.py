"""Multi-positive contrastive losses (K captions per image), tile by tile: no B×BK tensor.

Layout. B images I (B, D) and B·K texts T (B·K, D), image i's captions at rows
i·K … i·K + K − 1 (row j belongs to image j // K), as a batch that stacks each
image's K captions in turn does. S = s·I·Tᵀ (B, B·K); M is the positive mask,
M_ij = [j // K = i].

Softmax (`multipos_clip_loss`), ½(image→text + text→image):

    image→text  (1/B)  Σ_i −(1/K) Σ_{j: M_ij} log softmax_j(S_i·)_j   over all B·K texts
    text→image  (1/BK) Σ_j −log softmax_i(S_·j)_{j // K}                over the B images

The image→text term is the cross-entropy between the uniform distribution on
an image's K positives and its softmax over every text: the "L_out" form of
SupCon (Khosla et al. 2020), which that paper finds trains better than "L_in"
(−log Σ_pos p: summed probability), and the target-distribution loss of
StableRep (Tian, Fan et al. 2023). It keeps each positive's own gradient (L_in
lets one easy positive silence the rest) and makes K = 1 exactly the CLIP loss.
A text has one image, so its term is CLIP's.

Sigmoid (`multipos_siglip_loss`): z_ij = +1 where M_ij else −1 and
loss = Σ_ij softplus(−z_ij·(S_ij + b)) / B, normalised by the images as SigLIP
normalises by its batch. K = 1 is exactly `siglip_loss`.

The chain, imports going down:

    FusedMultiPosClipLoss, FusedMultiPosSigLipLoss  open_clip-shaped modules that gather
                                                    across ranks (`positives` = K)
    multipos_clip_loss[_local], multipos_siglip_loss  functional: one process / one rank
    _MultiPosClip, _MultiPosRows, _MultiPosSigLip   autograd.Functions, O(B·K·D) saved
    kernels   `multipos_triton` (CUDA) or the torch kernels below (CPU)

Across ranks (the local-loss form, as FusedClipLoss's): rank r holds b images
and their b·K texts, images offset … offset + b − 1 of the global batch
(offset = b·r). Its softmax loss is ½(its images against all B·K gathered texts
+ its texts against all B gathered images), each term a row-only softmax
(`_MultiPosRows`); its sigmoid loss its images against all gathered texts. The
mean over ranks is the one-process loss of the whole batch and, with gradients
through the gather, DDP's averaged gradient is the whole batch's.

The softmax gradient. With P = softmax over each row of S, Q over each column,
∂loss/∂S = (K·P + Q − 2·M) / (2BK), so a kernel set provides

    lse(I, T, s, cols=True)              clip's: per-row and per-column log-sum-exp
    grad(I, T, s, lse_r, lse_c, K)       (G·T, Gᵀ·I, Σ G∘(I·Tᵀ)), G = K·P + Q − 2·M

The row-only softmax (`_MultiPosRows`): rows X (m, D) against columns Y (n, D),
row r's labels the columns c with (c + col_offset) // CG = (r + row_offset) // RG
(CG of them), loss (1/m) Σ_r lse_r − (s/CG) Σ_{c label} X_r·Y_c, so
∂loss/∂S = (CG·P − M) / (CG·m), and a kernel set provides

    grad_rows(X, Y, s, lse, CG, groups, offsets)   (G·Y, Gᵀ·X, Σ G∘(X·Yᵀ)), G = CG·P − M

`multipos_clip_loss_reference` and `multipos_siglip_loss_reference` build S
whole: the oracles of the tests and the dense baseline of the benchmark.
"""

from __future__ import annotations

import importlib

import torch
import torch.nn.functional as F
from torch import nn

from vecap_cli.core import tiles
from vecap_cli.core.clip import TorchKernels as ClipKernels
from vecap_cli.core.clip import _with_zero_bias_grad
from vecap_cli.core.dispatch import choose_backend
from vecap_cli.core.distributed import all_gather_with_grad
from vecap_cli.core.tiles import as_scale, check_features, pick_kernels, row_chunks

# -- references --------------------------------------------------------------------


def _positive_mask(b: int, k: int, device) -> torch.Tensor:
    return (
        torch.arange(b * k, device=device)[None, :] // k == torch.arange(b, device=device)[:, None]
    )


def multipos_clip_loss_reference(image_features, text_features, logit_scale, positives: int):
    """The softmax loss above, densely: (B, B·K) logits and their log-softmaxes."""
    b, k = image_features.shape[0], positives
    logits = logit_scale * image_features @ text_features.T  # (B, BK)
    log_p = F.log_softmax(logits, dim=1).view(b, b, k)  # (B, B, K): image, image of text, k
    image_to_text = -log_p.diagonal(dim1=0, dim2=1).sum() / (b * k)  # over each image's K
    labels = torch.arange(b * k, device=logits.device) // k
    text_to_image = F.cross_entropy(logits.T, labels)
    return (image_to_text + text_to_image) / 2


def multipos_siglip_loss_reference(
    image_features, text_features, logit_scale, logit_bias, positives: int
):
    """The sigmoid loss above, densely: (B, B·K) logits."""
    logits = logit_scale * image_features @ text_features.T + logit_bias  # (B, BK)
    signs = _positive_mask(image_features.shape[0], positives, logits.device) * 2.0 - 1.0
    return -F.logsigmoid(signs * logits).sum() / image_features.shape[0]


# -- tiled torch kernels (CPU path, fallback) ----------------------------------------


def _positives(g: torch.Tensor, start: int, k: int) -> torch.Tensor:
    """The view of a chunk g (c, B·K) of rows start… on their positives: (K, c)."""
    return g.view(g.shape[0], -1, k).diagonal(start, dim1=0, dim2=1)


def _chunk_rows(n: int) -> int:
    """Rows of S per chunk: an eighth of tiles.TILE_ELEMENTS (4 MiB of fp32), where CLIP
    and SigLIP take all of it. S is K times wider here: at B = 4096, K = 2 the peak
    above the inputs was 0.31× the dense loss's with CLIP's 32 MiB chunks, 0.26× with
    8 MiB, 0.17× with 4 MiB (benchmarks/RESULTS.md). Smaller still costs time: each
    chunk's Gᵀ·X updates all of the (B·K, D) gradient."""
    return max(1, tiles.TILE_ELEMENTS // 8 // max(n, 1))


class TorchKernels:
    """Softmax kernels in torch: chunks of image rows of S, fp32, recomputed in backward."""

    @staticmethod
    def lse(x, y, scale, cols: bool):
        """CLIP's, which is rectangular already: (B,) over texts, (BK,) over images."""
        return ClipKernels.lse(x, y, scale, cols, rows=_chunk_rows(y.shape[0]))

    @staticmethod
    def grad(x, y, scale, lse_x, lse_y, k: int):
        x, y = x.float(), y.float()  # (B, D), (BK, D)
        gx = torch.empty_like(x)
        gy = torch.zeros_like(y)
        for start, stop in row_chunks(x.shape[0], y.shape[0], _chunk_rows(y.shape[0])):
            xc = x[start:stop]  # (c, D)
            s = (xc * scale) @ y.T  # (c, BK)
            g = s.sub(lse_x[start:stop, None]).exp_().mul_(k)  # K·P: one new chunk
            g.add_(s.sub_(lse_y).exp_())  # + Q, in s's memory
            _positives(g, start, k).sub_(2.0)
            torch.mm(g, y, out=gx[start:stop])
            gy.addmm_(g.T, xc)
        return gx, gy, (x * gx).sum()

    @staticmethod
    def grad_rows(x, y, scale, lse_x, weight: int, groups, offsets):
        x, y = x.float(), y.float()  # (m, D), (n, D)
        gx = torch.empty_like(x)
        gy = torch.zeros_like(y)
        for start, stop in row_chunks(x.shape[0], y.shape[0], _chunk_rows(y.shape[0])):
            xc = x[start:stop]  # (c, D)
            g = ((xc * scale) @ y.T).sub_(lse_x[start:stop, None]).exp_().mul_(weight)  # CG·P
            g[_label_index(start, stop, groups, offsets, x.device)] -= 1.0
            torch.mm(g, y, out=gx[start:stop])
            gy.addmm_(g.T, xc)
        return gx, gy, (x * gx).sum()


def _label_index(start: int, stop: int, groups, offsets, device):
    """(rows, columns) of the labels of rows start…stop−1 within their chunk: row r's
    CG columns from ((r + row_offset) // RG)·CG − col_offset on (module docstring)."""
    (rg, cg), (row_offset, col_offset) = groups, offsets
    rows = torch.arange(stop - start, device=device)
    first = (rows + start + row_offset) // rg * cg - col_offset  # (c,)
    cols = first[:, None] + torch.arange(cg, device=device)  # (c, CG)
    return rows.repeat_interleave(cg), cols.reshape(-1)


class SigmoidKernels:
    """Sigmoid kernels in torch, as siglip's TorchKernels with K positives per row."""

    @staticmethod
    def _minus_z_logits(xc, y, scale, bias, start, k):
        u = (xc * scale) @ y.T  # (c, BK)
        u += bias
        _positives(u, start, k).neg_()
        return u

    def loss_rows(self, x, y, scale, bias, k: int, offset: int = 0):
        """`offset`: the rows are images offset… of the batch whose texts y holds."""
        x, y = x.float(), y.float()
        out = x.new_empty(x.shape[0])  # (B,)
        for start, stop in row_chunks(x.shape[0], y.shape[0], _chunk_rows(y.shape[0])):
            u = self._minus_z_logits(x[start:stop], y, scale, bias, start + offset, k)
            out[start:stop] = F.softplus(u).sum(dim=1)
        return out

    def grad(self, x, y, scale, bias, k: int, offset: int = 0):
        x, y = x.float(), y.float()
        gx = torch.empty_like(x)
        gy = torch.zeros_like(y)
        gsum = x.new_zeros(())
        for start, stop in row_chunks(x.shape[0], y.shape[0], _chunk_rows(y.shape[0])):
            xc = x[start:stop]
            t = self._minus_z_logits(xc, y, scale, bias, start + offset, k).sigmoid_()
            t.neg_()
            _positives(t, start + offset, k).neg_()  # T = z·σ(−z·S): −σ off the positives
            torch.mm(t, y, out=gx[start:stop])
            gy.addmm_(t.T, xc)
            gsum += t.sum()
        return gx, gy, (x * gx).sum(), gsum


def _kernels(features: torch.Tensor, backend: str | None):
    return pick_kernels(features, backend, "vecap_cli.core.multipos_triton", TorchKernels)


# -- autograd --------------------------------------------------------------------------


class _MultiPosClip(torch.autograd.Function):
    @staticmethod
    def forward(ctx, image, text, scale, k, kernels):
        b = image.shape[0]
        with torch.autocast(image.device.type, enabled=False):
            lse_r, lse_c = kernels.lse(image, text, scale, cols=True)  # (B,), (BK,)
            # Σ M∘(I·Tᵀ) = Σ_i Σ_k I_i·T_{iK+k}, as (B, K, D)·(B, D, 1): no (B, K, D) product
            pos = torch.bmm(text.float().view(b, k, -1), image.float()[:, :, None]).sum()
            loss = (lse_r.sum() / b + lse_c.sum() / (b * k) - 2 * scale * pos / (b * k)) / 2
        ctx.save_for_backward(image, text, scale, lse_r, lse_c)
        ctx.kernels, ctx.k = kernels, k
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        image, text, scale, lse_r, lse_c = ctx.saved_tensors
        with torch.autocast(image.device.type, enabled=False):
            gi, gt, gdot = ctx.kernels.grad(image, text, scale, lse_r, lse_c, ctx.k)
            w = grad_loss.float() / (2 * image.shape[0] * ctx.k)  # ∂loss/∂S = w·G
            gi, gt = gi.mul_(w * scale), gt.mul_(w * scale)  # in place: fp32 buffers of ours
        return gi.to(image.dtype), gt.to(text.dtype), w * gdot, None, None


class _MultiPosRows(torch.autograd.Function):
    """The row-only softmax of rows X (m, D) against columns Y (n, D), CG labels per row
    (module docstring): one side of one rank's local loss."""

    @staticmethod
    def forward(ctx, rows, cols, scale, groups, offsets, kernels):
        (rg, cg), (row_offset, col_offset) = groups, offsets
        m = rows.shape[0]
        with torch.autocast(rows.device.type, enabled=False):
            lse, _ = kernels.lse(rows, cols, scale, cols=False)  # (m,)
            # Σ over label pairs = Σ over groups of (Σ its rows)·(Σ its columns)
            n_groups, first = m // rg, row_offset // rg * cg - col_offset
            x = rows.float().reshape(n_groups, rg, -1).sum(dim=1)  # (groups, D)
            y = cols[first : first + n_groups * cg].float().reshape(n_groups, cg, -1).sum(dim=1)
            loss = (lse.sum() - scale * (x * y).sum() / cg) / m
        ctx.save_for_backward(rows, cols, scale, lse)
        ctx.kernels, ctx.groups, ctx.offsets = kernels, groups, offsets
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        rows, cols, scale, lse = ctx.saved_tensors
        cg = ctx.groups[1]
        with torch.autocast(rows.device.type, enabled=False):
            gx, gy, gdot = ctx.kernels.grad_rows(
                rows, cols, scale, lse, cg, ctx.groups, ctx.offsets
            )
            w = grad_loss.float() / (cg * rows.shape[0])  # ∂loss/∂S = w·G
            gx, gy = gx.mul_(w * scale), gy.mul_(w * scale)
        return gx.to(rows.dtype), gy.to(cols.dtype), w * gdot, None, None, None


class _MultiPosSigLip(torch.autograd.Function):
    @staticmethod
    def forward(ctx, image, text, scale, bias, k, offset, kernels):
        ctx.save_for_backward(image, text, scale, bias)
        ctx.kernels, ctx.k, ctx.offset = kernels, k, offset
        with torch.autocast(image.device.type, enabled=False):
            return kernels.loss_rows(image, text, scale, bias, k, offset).sum() / image.shape[0]

    @staticmethod
    def backward(ctx, grad_loss):
        image, text, scale, bias = ctx.saved_tensors
        with torch.autocast(image.device.type, enabled=False):
            gi, gt, gdot, gsum = ctx.kernels.grad(image, text, scale, bias, ctx.k, ctx.offset)
            w = -grad_loss.float() / image.shape[0]  # ∂loss/∂S = −T/B
            gi, gt = gi.mul_(w * scale), gt.mul_(w * scale)
        return gi.to(image.dtype), gt.to(text.dtype), w * gdot, w * gsum, None, None, None


# -- functional ------------------------------------------------------------------------


def _check(image_features, text_features, positives: int, offset: int | None = None) -> None:
    """`offset` None: the texts are the images' own; else the images are images
    offset… of a (gathered) batch whose texts are given."""
    check_features(image_features, text_features)
    if positives < 1:
        raise ValueError(f"positives must be >= 1, got {positives}")
    need = image_features.shape[0] * positives
    if offset is None and text_features.shape[0] != need:
        raise ValueError(
            f"{image_features.shape[0]} images with {positives} positives need "
            f"{need} texts, got {text_features.shape[0]}"
        )
    if offset is not None and (
        offset < 0 or text_features.shape[0] < (offset + image_features.shape[0]) * positives
    ):
        raise ValueError(
            f"label_offset {offset} + {image_features.shape[0]} images exceed the "
            f"{text_features.shape[0]} texts' images"
        )


def multipos_clip_loss(
    image_features, text_features, logit_scale, logit_bias=None, *, positives: int, backend=None
):
    """The softmax multi-positive loss (module docstring): images (B, D), texts (B·K, D)
    with image i's captions at rows i·K…i·K+K−1, K = `positives`.

    fp32/bf16/fp16 features, accumulated in fp32; logit_scale already
    exponentiated. `logit_bias` is accepted (open_clip's signature) and, softmax
    being shift-invariant, gets an exact zero gradient. Returns a 0-dim fp32 loss.
    `backend` ("torch" | "triton") overrides dispatch.
    """
    _check(image_features, text_features, positives)
    kernels = _kernels(image_features, backend)
    scale = as_scale(logit_scale, image_features)
    loss = _MultiPosClip.apply(image_features, text_features, scale, positives, kernels)
    return _with_zero_bias_grad(loss, logit_bias)


def multipos_clip_loss_local(
    image_features,
    text_features,
    all_image_features,
    all_text_features,
    logit_scale,
    logit_bias=None,
    *,
    positives: int,
    label_offset: int,
    backend=None,
):
    """One rank's softmax loss in the local-loss form (module docstring): its b images
    and b·K texts against all ranks' gathered B images and B·K texts, its images being
    images label_offset … of the batch (b·rank). Gather with
    `distributed.all_gather_with_grad` for gradients to reach other ranks."""
    k = positives
    _check(image_features, text_features, k)
    _check(image_features, all_text_features, k, label_offset)
    if all_text_features.shape[0] != all_image_features.shape[0] * k:
        raise ValueError("the gathered texts are not K per gathered image")
    kernels = _kernels(image_features, backend)
    scale = as_scale(logit_scale, image_features)
    per_image = _MultiPosRows.apply(
        image_features, all_text_features, scale, (1, k), (label_offset, 0), kernels
    )
    per_text = _MultiPosRows.apply(
        text_features, all_image_features, scale, (k, 1), (label_offset * k, 0), kernels
    )
    return _with_zero_bias_grad((per_image + per_text) / 2, logit_bias)


def multipos_siglip_loss(
    image_features,
    text_features,
    logit_scale,
    logit_bias=None,
    *,
    positives: int,
    label_offset: int | None = None,
    backend=None,
):
    """The sigmoid multi-positive loss (module docstring), same layout as
    `multipos_clip_loss`; `logit_bias` None is 0. `label_offset`: the images are
    images label_offset … of the batch whose texts are given (one rank's rows
    against the gathered texts, b·rank); None: the texts are the images' own.
    `backend` overrides dispatch."""
    _check(image_features, text_features, positives, label_offset)
    kernels = SigmoidKernels()
    if choose_backend(image_features, backend) == "triton":
        kernels = importlib.import_module("vecap_cli.core.multipos_triton").Sigmoid
    scale = as_scale(logit_scale, image_features)
    bias = as_scale(0.0 if logit_bias is None else logit_bias, image_features)
    offset = label_offset or 0
    return _MultiPosSigLip.apply(
        image_features, text_features, scale, bias, positives, offset, kernels
    )


# -- modules -------------------------------------------------------------------------------


class FusedMultiPosClipLoss(nn.Module):
    """The softmax multi-positive loss shaped as open_clip's ClipLoss (forward(image,
    text, logit_scale, logit_bias=None)), texts (B·K, D) grouped by image. Across
    ranks: the local-loss form with gradients through the gather."""

    def __init__(self, positives: int, rank: int = 0, world_size: int = 1, backend=None):
        super().__init__()
        self.positives, self.rank, self.world_size, self.backend = (
            positives, rank, world_size, backend,
        )  # fmt: skip

    def forward(
        self, image_features, text_features, logit_scale, logit_bias=None, output_dict=False
    ):
        k = self.positives
        if self.world_size == 1:
            loss = multipos_clip_loss(
                image_features, text_features, logit_scale, logit_bias,
                positives=k, backend=self.backend,
            )  # fmt: skip
        else:
            loss = multipos_clip_loss_local(
                image_features, text_features,
                all_gather_with_grad(image_features), all_gather_with_grad(text_features),
                logit_scale, logit_bias,
                positives=k, label_offset=image_features.shape[0] * self.rank,
                backend=self.backend,
            )  # fmt: skip
        return {"contrastive_loss": loss} if output_dict else loss


class FusedMultiPosSigLipLoss(nn.Module):
    """The sigmoid multi-positive loss shaped as open_clip's SigLipLoss. Across ranks:
    this rank's images against all gathered texts, gradients through the gather."""

    def __init__(self, positives: int, rank: int = 0, world_size: int = 1, backend=None):
        super().__init__()
        self.positives, self.rank, self.world_size, self.backend = (
            positives, rank, world_size, backend,
        )  # fmt: skip

    def forward(self, image_features, text_features, logit_scale, logit_bias, output_dict=False):
        offset = None
        if self.world_size > 1:
            text_features = all_gather_with_grad(text_features)  # (world·b·K, D)
            offset = image_features.shape[0] * self.rank
        loss = multipos_siglip_loss(
            image_features, text_features, logit_scale, logit_bias,
            positives=self.positives, label_offset=offset, backend=self.backend,
        )  # fmt: skip
        return {"contrastive_loss": loss} if output_dict else loss
