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

    multipos_clip_loss, multipos_siglip_loss     functional
    _MultiPosClip, _MultiPosSigLip               autograd.Functions, O(B·K·D) saved
    kernels   `multipos_triton` (CUDA) or the torch kernels below (CPU)

The softmax gradient. With P = softmax over each row of S, Q over each column,
∂loss/∂S = (K·P + Q − 2·M) / (2BK), so a kernel set provides

    lse(I, T, s, cols=True)              clip's: per-row and per-column log-sum-exp
    grad(I, T, s, lse_r, lse_c, K)       (G·T, Gᵀ·I, Σ G∘(I·Tᵀ)), G = K·P + Q − 2·M

`multipos_clip_loss_reference` and `multipos_siglip_loss_reference` build S
whole: the oracles of the tests and the dense baseline of the benchmark.
"""

from __future__ import annotations

import importlib

import torch
import torch.nn.functional as F

from vecap_cli.core import tiles
from vecap_cli.core.clip import TorchKernels as ClipKernels
from vecap_cli.core.clip import _with_zero_bias_grad
from vecap_cli.core.dispatch import choose_backend
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


class SigmoidKernels:
    """Sigmoid kernels in torch, as siglip's TorchKernels with K positives per row."""

    @staticmethod
    def _minus_z_logits(xc, y, scale, bias, start, k):
        u = (xc * scale) @ y.T  # (c, BK)
        u += bias
        _positives(u, start, k).neg_()
        return u

    def loss_rows(self, x, y, scale, bias, k: int):
        x, y = x.float(), y.float()
        out = x.new_empty(x.shape[0])  # (B,)
        for start, stop in row_chunks(x.shape[0], y.shape[0], _chunk_rows(y.shape[0])):
            u = self._minus_z_logits(x[start:stop], y, scale, bias, start, k)
            out[start:stop] = F.softplus(u).sum(dim=1)
        return out

    def grad(self, x, y, scale, bias, k: int):
        x, y = x.float(), y.float()
        gx = torch.empty_like(x)
        gy = torch.zeros_like(y)
        gsum = x.new_zeros(())
        for start, stop in row_chunks(x.shape[0], y.shape[0], _chunk_rows(y.shape[0])):
            xc = x[start:stop]
            t = self._minus_z_logits(xc, y, scale, bias, start, k).sigmoid_()
            t.neg_()
            _positives(t, start, k).neg_()  # T = z·σ(−z·S): −σ off the positives
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


class _MultiPosSigLip(torch.autograd.Function):
    @staticmethod
    def forward(ctx, image, text, scale, bias, k, kernels):
        ctx.save_for_backward(image, text, scale, bias)
        ctx.kernels, ctx.k = kernels, k
        with torch.autocast(image.device.type, enabled=False):
            return kernels.loss_rows(image, text, scale, bias, k).sum() / image.shape[0]

    @staticmethod
    def backward(ctx, grad_loss):
        image, text, scale, bias = ctx.saved_tensors
        with torch.autocast(image.device.type, enabled=False):
            gi, gt, gdot, gsum = ctx.kernels.grad(image, text, scale, bias, ctx.k)
            w = -grad_loss.float() / image.shape[0]  # ∂loss/∂S = −T/B
            gi, gt = gi.mul_(w * scale), gt.mul_(w * scale)
        return gi.to(image.dtype), gt.to(text.dtype), w * gdot, w * gsum, None, None


# -- functional ------------------------------------------------------------------------


def _check(image_features, text_features, positives: int) -> None:
    check_features(image_features, text_features)
    if positives < 1:
        raise ValueError(f"positives must be >= 1, got {positives}")
    if text_features.shape[0] != image_features.shape[0] * positives:
        raise ValueError(
            f"{image_features.shape[0]} images with {positives} positives need "
            f"{image_features.shape[0] * positives} texts, got {text_features.shape[0]}"
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


def multipos_siglip_loss(
    image_features, text_features, logit_scale, logit_bias=None, *, positives: int, backend=None
):
    """The sigmoid multi-positive loss (module docstring), same layout as
    `multipos_clip_loss`; `logit_bias` None is 0. `backend` overrides dispatch."""
    _check(image_features, text_features, positives)
    kernels = SigmoidKernels()
    if choose_backend(image_features, backend) == "triton":
        kernels = importlib.import_module("vecap_cli.core.multipos_triton").Sigmoid
    scale = as_scale(logit_scale, image_features)
    bias = as_scale(0.0 if logit_bias is None else logit_bias, image_features)
    return _MultiPosSigLip.apply(image_features, text_features, scale, bias, positives, kernels)
