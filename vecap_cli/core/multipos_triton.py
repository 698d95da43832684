"""Triton kernels for the softmax multi-positive loss (see `vecap_cli.core.multipos`).

The forward is CLIP's: `clip_triton.lse` is rectangular already, giving the
log-sum-exp of S = s·I·Tᵀ (B, B·K) per image row and per text column. The
backward is one kernel, launched once per side, that recomputes S tile by tile:

    image rows:  G·T   for G = K·exp(S − lse_r) + exp(S − lse_c) − 2·M
    text rows:   Gᵀ·I  (the same G, walked from the texts' side)

where M_ij = [j // K = i] is `tiles.is_group_label` with groups
(1 and K on the image side, K and 1 on the text side). As in CLIP's kernel,
the positive term is subtracted in fp32 before G is cast to the input dtype.

One rank's local loss (`grad_rows`) runs the same kernel with one side's term
off and the labels shifted by the rank's offset.

The sigmoid loss runs SigLIP's kernels with K labels per row (`Sigmoid`).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from vecap_cli.core import siglip_triton
from vecap_cli.core import tiles_triton as tiles
from vecap_cli.core.clip_triton import lse  # noqa: F401  (the kernel set's forward)


@triton.jit
def _grad_kernel(
    x_ptr, y_ptr, M, N, D, stride_x, stride_y,
    scale_ptr, lse_x_ptr, lse_y_ptr, weight_x, weight_y, label_weight,
    row_offset, col_offset, ROW_GROUP, COL_GROUP,
    g_ptr, stride_g, gdot_ptr,  # out: G·Y (M, D), Σ_j G∘(X·Yᵀ) (M,)
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr, UPCAST: tl.constexpr,
):  # fmt: skip
    rows, row_ok, x_rows = tiles.program_rows(x_ptr, stride_x, M, BLOCK_M)
    dcols, d_ok = tiles.program_slice(D, BLOCK_D)
    scale = tl.load(scale_ptr)
    lse_x = tl.load(lse_x_ptr + rows, mask=row_ok, other=float("inf"))
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    gdot = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        cols, col_ok, dots = tiles.column_tile(
            x_rows, row_ok, y_ptr, stride_y, n0, N, D, BLOCK_M, BLOCK_N, BLOCK_K, PRECISION, UPCAST
        )
        s = scale * dots
        lse_y = tl.load(lse_y_ptr + cols, mask=col_ok, other=float("inf"))
        g = weight_x * tl.exp(s - lse_x[:, None]) + weight_y * tl.exp(s - lse_y[None, :])
        positive = tiles.is_group_label(rows, cols, row_offset, col_offset, ROW_GROUP, COL_GROUP)
        g = tl.where(positive, g - label_weight, g)
        g = tl.where(row_ok[:, None] & col_ok[None, :], g, 0.0)
        gdot += tl.sum(g * dots, axis=1)  # from fp32 G: the sum cancels (see clip_triton)
        acc = tiles.accumulate_rows(
            acc, g, y_ptr, cols, col_ok, dcols, d_ok, stride_y, PRECISION, UPCAST
        )
    tiles.store_slice(g_ptr, stride_g, acc, rows, row_ok, dcols, d_ok)
    tiles.store_row_sums(gdot_ptr, gdot, rows, row_ok)


def _grad_rows(x, y, scale, lse_x, lse_y, weights, groups, offsets=(0, 0)):
    """`weights`: (on P, on Q, on the labels); `offsets`: (row, column), as
    `tiles.is_group_label` reads them."""
    out = x.new_empty(x.shape, dtype=torch.float32)  # (m, D)
    gdot = x.new_empty(x.shape[0], dtype=torch.float32)  # (m,)
    tiles.launch(
        _grad_kernel, x, y, scale, lse_x, lse_y, *map(float, weights), *offsets, *groups,
        out, out.stride(0), gdot, d_slices=True,
    )  # fmt: skip
    return out, gdot


def grad(x, y, scale, lse_x, lse_y, k: int):
    """(G·T (B, D), Gᵀ·I (BK, D), Σ G∘(I·Tᵀ)), fp32, for images x and texts y."""
    x, y = x.contiguous(), y.contiguous()
    gx, gdot = _grad_rows(x, y, scale, lse_x, lse_y, (k, 1, 2), (1, k))
    gy, _ = _grad_rows(y, x, scale, lse_y, lse_x, (1, k, 2), (k, 1))
    return gx, gy, gdot.sum()


def grad_rows(x, y, scale, lse_x, weight: int, groups, offsets):
    """The row-only softmax's (G·Y, Gᵀ·X, Σ G∘(X·Yᵀ)) for G = CG·P − M (see
    `multipos._MultiPosRows`): the same kernel with the column term off (its
    log-sum-exp +inf, so exp(S − lse) is 0), walked from each side."""
    x, y = x.contiguous(), y.contiguous()
    off = torch.full((y.shape[0],), float("inf"), device=y.device)  # (n,): no column term
    (rg, cg), (row_offset, col_offset) = groups, offsets
    gx, gdot = _grad_rows(x, y, scale, lse_x, off, (weight, 0, 1), (rg, cg), offsets)
    gy, _ = _grad_rows(y, x, scale, off, lse_x, (0, weight, 1), (cg, rg), (col_offset, row_offset))
    return gx, gy, gdot.sum()


class Sigmoid:
    """The sigmoid kernel set: `siglip_triton`'s kernels, K positive labels per image."""

    @staticmethod
    def loss_rows(x, y, scale, bias, k: int, offset: int = 0):
        return siglip_triton.loss_rows(x, y, scale, bias, offset, positives=k)

    @staticmethod
    def grad(x, y, scale, bias, k: int, offset: int = 0):
        return siglip_triton.grad(x, y, scale, bias, offset, positives=k)
