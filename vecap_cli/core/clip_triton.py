"""Triton kernels and launchers for the CLIP loss (see `vecap_cli.core.clip`).

Two kernels, each launched twice with the roles of the two feature sets
swapped, so no B×B tensor is ever written:

- `_lse_kernel`: per row of X, the log-sum-exp of S = s·X·Yᵀ over all of Y,
  by an online (running max, running sum) reduction over column tiles.
- `_grad_kernel`: per row of X and slice of D, G·Y where
  G = exp(S − lse_x) + exp(S − lse_y) − w·[j = i + offset], recomputing S
  tile by tile. The label term is subtracted in fp32 before G is cast to the
  input dtype: near-one-hot softmax rows would otherwise lose the small
  difference P − 1 to bf16 rounding.

Tiling, launch and the argument layout they share with SigLIP's: `tiles_triton`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from vecap_cli.core import tiles_triton as tiles


@triton.jit
def _lse_kernel(
    x_ptr, y_ptr, M, N, D, stride_x, stride_y,
    scale_ptr, lse_ptr,  # in: s; out: (M,)
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    PRECISION: tl.constexpr, UPCAST: tl.constexpr,
):  # fmt: skip
    rows, row_ok, x_rows = tiles.program_rows(x_ptr, stride_x, M, BLOCK_M)
    scale = tl.load(scale_ptr)
    run_max = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    run_sum = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        _, col_ok, dots = tiles.column_tile(
            x_rows, row_ok, y_ptr, stride_y, n0, N, D, BLOCK_M, BLOCK_N, BLOCK_K, PRECISION, UPCAST
        )
        s = tl.where(col_ok[None, :], scale * dots, float("-inf"))
        # Every tile holds at least one real column, so new_max is finite and
        # exp(-inf - new_max) = 0 handles the first step.
        new_max = tl.maximum(run_max, tl.max(s, axis=1))
        run_sum = run_sum * tl.exp(run_max - new_max) + tl.sum(tl.exp(s - new_max[:, None]), axis=1)
        run_max = new_max
    tl.store(lse_ptr + rows, run_max + tl.log(run_sum), mask=row_ok)


@triton.jit
def _grad_kernel(
    x_ptr, y_ptr, M, N, D, stride_x, stride_y,
    scale_ptr, lse_x_ptr, lse_y_ptr, row_offset, col_offset, label_weight,
    g_ptr, stride_g, gdot_ptr,  # out: G·Y (M, D), Σ_j G∘(X·Yᵀ) (M,)
    USE_LSE_X: tl.constexpr, USE_LSE_Y: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr, UPCAST: tl.constexpr,
):  # fmt: skip
    rows, row_ok, x_rows = tiles.program_rows(x_ptr, stride_x, M, BLOCK_M)
    dcols, d_ok = tiles.program_slice(D, BLOCK_D)
    scale = tl.load(scale_ptr)
    if USE_LSE_X:
        lse_x = tl.load(lse_x_ptr + rows, mask=row_ok, other=float("inf"))
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    gdot = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        cols, col_ok, dots = tiles.column_tile(
            x_rows, row_ok, y_ptr, stride_y, n0, N, D, BLOCK_M, BLOCK_N, BLOCK_K, PRECISION, UPCAST
        )
        s = scale * dots
        g = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        if USE_LSE_X:
            g += tl.exp(s - lse_x[:, None])
        if USE_LSE_Y:
            lse_y = tl.load(lse_y_ptr + cols, mask=col_ok, other=float("inf"))
            g += tl.exp(s - lse_y[None, :])
        g = tl.where(tiles.is_label(rows, cols, row_offset, col_offset), g - label_weight, g)
        g = tl.where(row_ok[:, None] & col_ok[None, :], g, 0.0)
        # Σ_j G_ij·(X_i·Y_j) for the logit_scale gradient, from fp32 G: the sum
        # cancels (rows of G sum to ~0), so G rounded to bf16 would blur it.
        gdot += tl.sum(g * dots, axis=1)
        acc = tiles.accumulate_rows(
            acc, g, y_ptr, cols, col_ok, dcols, d_ok, stride_y, PRECISION, UPCAST
        )
    tiles.store_slice(g_ptr, stride_g, acc, rows, row_ok, dcols, d_ok)
    tiles.store_row_sums(gdot_ptr, gdot, rows, row_ok)


def _lse_rows(x: torch.Tensor, y: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    out = x.new_empty(x.shape[0], dtype=torch.float32)  # (m,)
    tiles.launch(_lse_kernel, x, y, scale, out)
    return out


def _grad_rows(x, y, scale, lse_x, lse_y, label_weight, row_offset, col_offset):
    out = x.new_empty(x.shape, dtype=torch.float32)  # (m, D)
    gdot = x.new_empty(x.shape[0], dtype=torch.float32)  # (m,)
    dummy = scale  # never read: the matching USE_LSE_* flag is off
    tiles.launch(
        _grad_kernel, x, y,
        scale, dummy if lse_x is None else lse_x, dummy if lse_y is None else lse_y,
        row_offset, col_offset, float(label_weight),
        out, out.stride(0), gdot,
        lse_x is not None, lse_y is not None,
        d_slices=True,
    )  # fmt: skip
    return out, gdot


def lse(x, y, scale, cols: bool):
    """(lse over Y for each row of X (m,), lse over X for each row of Y (n,) or None)."""
    x, y = x.contiguous(), y.contiguous()
    return _lse_rows(x, y, scale), (_lse_rows(y, x, scale) if cols else None)


def grad(x, y, scale, lse_x, lse_y, label_weight: float, offset: int):
    """(G·Y (m, D), Gᵀ·X (n, D), Σ G∘(X·Yᵀ)), fp32; row i's label is column i + offset."""
    x, y = x.contiguous(), y.contiguous()
    gx, gdot = _grad_rows(x, y, scale, lse_x, lse_y, label_weight, offset, 0)
    gy, _ = _grad_rows(y, x, scale, lse_y, lse_x, label_weight, 0, offset)
    return gx, gy, gdot.sum()
