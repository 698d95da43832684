"""Triton kernels and launchers for the SigLIP loss (see `vecap_cli.core.siglip`).

S = s·X·Yᵀ + b and z = +1 on the label (column i + offset of row i), −1 off it.
With `positives` K > 1 (the multi-positive loss, `vecap_cli.core.multipos`) row i's
labels are the K columns (i + offset)·K … (i + offset)·K + K − 1.

- `_loss_kernel`: per row of X, Σ_j softplus(−z·S), tile by tile.
- `_grad_kernel`: per row of X and slice of D, T·Y for T = z·σ(−z·S), plus
  the per-row Σ T and Σ T∘(X·Yᵀ) that the bias and scale gradients need.
  Launched again with X and Y swapped for Tᵀ·X, so no B×B tensor is written.

Tiling, launch and the argument layout they share with CLIP's: `tiles_triton`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from vecap_cli.core import tiles_triton as tiles


@triton.jit
def _softplus(u):
    """log(1 + exp(u)) with no overflow; log1p by series where 1 + e would round e away."""
    e = tl.exp(-tl.abs(u))
    log1p_e = tl.where(
        e < 1e-2, e * (1.0 - e * (0.5 - e * (1.0 / 3.0 - e * 0.25))), tl.log(1.0 + e)
    )
    return tl.maximum(u, 0.0) + log1p_e


@triton.jit
def _loss_kernel(
    x_ptr, y_ptr, M, N, D, stride_x, stride_y,
    scale_ptr, bias_ptr, row_offset, col_offset, ROW_GROUP, COL_GROUP,
    out_ptr,  # (M,)
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    PRECISION: tl.constexpr, UPCAST: tl.constexpr,
):  # fmt: skip
    rows, row_ok, x_rows = tiles.program_rows(x_ptr, stride_x, M, BLOCK_M)
    scale, bias = tl.load(scale_ptr), tl.load(bias_ptr)
    acc = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        cols, col_ok, dots = tiles.column_tile(
            x_rows, row_ok, y_ptr, stride_y, n0, N, D, BLOCK_M, BLOCK_N, BLOCK_K, PRECISION, UPCAST
        )
        s = scale * dots + bias
        label = tiles.is_group_label(rows, cols, row_offset, col_offset, ROW_GROUP, COL_GROUP)
        u = tl.where(label, -s, s)  # −z·S
        acc += tl.sum(tl.where(row_ok[:, None] & col_ok[None, :], _softplus(u), 0.0), axis=1)
    tl.store(out_ptr + rows, acc, mask=row_ok)


@triton.jit
def _grad_kernel(
    x_ptr, y_ptr, M, N, D, stride_x, stride_y,
    scale_ptr, bias_ptr, row_offset, col_offset, ROW_GROUP, COL_GROUP,
    g_ptr, stride_g, gdot_ptr, gsum_ptr,  # out: T·Y (M, D), Σ_j T∘(X·Yᵀ) and Σ_j T (M,)
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr, UPCAST: tl.constexpr,
):  # fmt: skip
    rows, row_ok, x_rows = tiles.program_rows(x_ptr, stride_x, M, BLOCK_M)
    dcols, d_ok = tiles.program_slice(D, BLOCK_D)
    scale, bias = tl.load(scale_ptr), tl.load(bias_ptr)
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    gdot = tl.zeros((BLOCK_M,), dtype=tl.float32)
    gsum = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        cols, col_ok, dots = tiles.column_tile(
            x_rows, row_ok, y_ptr, stride_y, n0, N, D, BLOCK_M, BLOCK_N, BLOCK_K, PRECISION, UPCAST
        )
        label = tiles.is_group_label(rows, cols, row_offset, col_offset, ROW_GROUP, COL_GROUP)
        z = tl.where(label, 1.0, -1.0)
        t = z * tl.sigmoid(-z * (scale * dots + bias))
        t = tl.where(row_ok[:, None] & col_ok[None, :], t, 0.0)
        gdot += tl.sum(t * dots, axis=1)
        gsum += tl.sum(t, axis=1)
        acc = tiles.accumulate_rows(
            acc, t, y_ptr, cols, col_ok, dcols, d_ok, stride_y, PRECISION, UPCAST
        )
    tiles.store_slice(g_ptr, stride_g, acc, rows, row_ok, dcols, d_ok)
    tiles.store_row_sums(gdot_ptr, gdot, rows, row_ok)
    tiles.store_row_sums(gsum_ptr, gsum, rows, row_ok)


def loss_rows(x, y, scale, bias, offset: int, positives: int = 1) -> torch.Tensor:
    """Σ_j softplus(−z·S) for each row of X, (m,) fp32."""
    x, y = x.contiguous(), y.contiguous()
    out = x.new_empty(x.shape[0], dtype=torch.float32)
    tiles.launch(_loss_kernel, x, y, scale, bias, offset, 0, 1, positives, out)
    return out


def _grad_rows(x, y, scale, bias, row_offset, col_offset, groups):
    out = x.new_empty(x.shape, dtype=torch.float32)  # (m, D)
    gdot = x.new_empty(x.shape[0], dtype=torch.float32)  # (m,)
    gsum = x.new_empty(x.shape[0], dtype=torch.float32)  # (m,)
    tiles.launch(
        _grad_kernel, x, y, scale, bias, row_offset, col_offset, *groups,
        out, out.stride(0), gdot, gsum,
        d_slices=True,
    )  # fmt: skip
    return out, gdot, gsum


def grad(x, y, scale, bias, offset: int, positives: int = 1):
    """(T·Y (m, D), Tᵀ·X (n, D), Σ T∘(X·Yᵀ), Σ T), fp32."""
    x, y = x.contiguous(), y.contiguous()
    gx, gdot, gsum = _grad_rows(x, y, scale, bias, offset, 0, (1, positives))
    gy, _, _ = _grad_rows(y, x, scale, bias, 0, offset, (positives, 1))
    return gx, gy, gdot.sum(), gsum.sum()
