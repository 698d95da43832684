"""Triton kernels and launchers for the SigLIP loss (see `vecap_cli.core.siglip`).

S = s·X·Yᵀ + b and z = +1 on the label (column i + offset of row i), −1 off it.

- `_loss_kernel`: per row of X, Σ_j softplus(−z·S), tile by tile.
- `_grad_kernel`: per row of X and slice of D, T·Y for T = z·σ(−z·S), plus
  the per-row Σ T and Σ T∘(X·Yᵀ) that the bias and scale gradients need.
  Launched again with X and Y swapped for Tᵀ·X, so no B×B tensor is written.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from vecap_cli.core.tiles_triton import accumulate_rows, logits_tile, loss_tiles


@triton.jit
def _softplus(u):
    """log(1 + exp(u)) with no overflow; log1p by series where 1 + e would round e away."""
    e = tl.exp(-tl.abs(u))
    log1p_e = tl.where(
        e < 1e-2, e * (1.0 - e * (0.5 - e * (1.0 / 3.0 - e * 0.25))), tl.log(1.0 + e)
    )
    return tl.maximum(u, 0.0) + log1p_e


@triton.jit
def _signs(rows, cols, row_offset, col_offset):
    """z: +1 where column is row's label, else −1. (BLOCK_M, BLOCK_N)"""
    return tl.where((rows[:, None] + row_offset) == (cols[None, :] + col_offset), 1.0, -1.0)


@triton.jit
def _loss_kernel(
    x_ptr,
    y_ptr,
    scale_ptr,
    bias_ptr,
    out_ptr,
    M,
    N,
    D,
    stride_x,
    stride_y,
    row_offset,
    col_offset,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < M
    scale = tl.load(scale_ptr)
    bias = tl.load(bias_ptr)
    acc = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N)
        col_ok = cols < N
        s = scale * logits_tile(
            x_ptr, y_ptr, rows, cols, row_ok, col_ok, D, stride_x, stride_y,
            BLOCK_M, BLOCK_N, BLOCK_K, PRECISION, UPCAST,
        ) + bias  # fmt: skip
        loss = _softplus(-_signs(rows, cols, row_offset, col_offset) * s)
        acc += tl.sum(tl.where(row_ok[:, None] & col_ok[None, :], loss, 0.0), axis=1)
    tl.store(out_ptr + rows, acc, mask=row_ok)


@triton.jit
def _grad_kernel(
    x_ptr,
    y_ptr,
    scale_ptr,
    bias_ptr,
    g_ptr,
    gdot_ptr,
    gsum_ptr,
    M,
    N,
    D,
    stride_x,
    stride_y,
    stride_g,
    row_offset,
    col_offset,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < M
    dcols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    d_ok = dcols < D
    scale = tl.load(scale_ptr)
    bias = tl.load(bias_ptr)
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    gdot = tl.zeros((BLOCK_M,), dtype=tl.float32)
    gsum = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N)
        col_ok = cols < N
        dots = logits_tile(
            x_ptr, y_ptr, rows, cols, row_ok, col_ok, D, stride_x, stride_y,
            BLOCK_M, BLOCK_N, BLOCK_K, PRECISION, UPCAST,
        )  # fmt: skip
        z = _signs(rows, cols, row_offset, col_offset)
        t = z * tl.sigmoid(-z * (scale * dots + bias))
        t = tl.where(row_ok[:, None] & col_ok[None, :], t, 0.0)
        gdot += tl.sum(t * dots, axis=1)
        gsum += tl.sum(t, axis=1)
        acc = accumulate_rows(acc, t, y_ptr, cols, col_ok, dcols, d_ok, stride_y, PRECISION, UPCAST)
    tl.store(
        g_ptr + rows[:, None] * stride_g + dcols[None, :], acc, mask=row_ok[:, None] & d_ok[None, :]
    )
    first_slice = tl.program_id(1) == 0
    tl.store(gdot_ptr + rows, gdot, mask=row_ok & first_slice)
    tl.store(gsum_ptr + rows, gsum, mask=row_ok & first_slice)


def loss_rows(x, y, scale, bias, offset: int) -> torch.Tensor:
    """Σ_j softplus(−z·S) for each row of X, (m,) fp32."""
    x, y = x.contiguous(), y.contiguous()
    m, d = x.shape
    tiles = loss_tiles(x)
    out = torch.empty(m, device=x.device, dtype=torch.float32)
    _loss_kernel[(triton.cdiv(m, tiles.block_m),)](
        x, y, scale, bias, out, m, y.shape[0], d, x.stride(0), y.stride(0), offset, 0,
        tiles.block_m, tiles.block_n, tiles.block_k, tiles.precision, tiles.upcast,
        num_warps=tiles.num_warps,
    )  # fmt: skip
    return out


def _grad_rows(x, y, scale, bias, row_offset, col_offset):
    m, d = x.shape
    tiles = loss_tiles(x)
    block_d = min(tiles.block_d, triton.next_power_of_2(d))
    out = torch.empty(m, d, device=x.device, dtype=torch.float32)  # (m, D)
    gdot = torch.empty(m, device=x.device, dtype=torch.float32)  # (m,)
    gsum = torch.empty(m, device=x.device, dtype=torch.float32)  # (m,)
    grid = (triton.cdiv(m, tiles.block_m), triton.cdiv(d, block_d))
    _grad_kernel[grid](
        x, y, scale, bias, out, gdot, gsum, m, y.shape[0], d,
        x.stride(0), y.stride(0), out.stride(0), row_offset, col_offset,
        tiles.block_m, tiles.block_n, tiles.block_k, block_d, tiles.precision, tiles.upcast,
        num_warps=tiles.num_warps,
    )  # fmt: skip
    return out, gdot, gsum


def grad(x, y, scale, bias, offset: int):
    """(T·Y (m, D), Tᵀ·X (n, D), Σ T∘(X·Yᵀ), Σ T), fp32."""
    x, y = x.contiguous(), y.contiguous()
    gx, gdot, gsum = _grad_rows(x, y, scale, bias, offset, 0)
    gy, _, _ = _grad_rows(y, x, scale, bias, 0, offset)
    return gx, gy, gdot.sum(), gsum.sum()
