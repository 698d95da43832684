"""Triton kernels for the distillation loss (see `vecap_cli.core.distill`).

The log-sum-exps are CLIP's (`clip_triton.lse`), run on the student's S = s·X·Yᵀ
and on the teacher's T = t·U·Vᵀ. Two kernels of our own, each launched once
per side (X's rows, then Y's with the roles swapped), recompute S and T tile by
tile, so no B×B tensor is ever written:

- `_cross_kernel`: per row i, Σ_j exp(T_ij − lse_t_i)·(T_ij − S_ij), the
  teacher-weighted term of the KL.
- `_grad_kernel`: per row and slice of D, G·Y for
  G = exp(S − lse_s_x) − exp(T − lse_t_x) [+ exp(S − lse_s_y) − exp(T − lse_t_y)].
  G is a difference of probabilities: it is formed in fp32 and only then cast
  to the input dtype for the dot.

The teacher's features are cast to the student's dtype, so one tile shape and
one dot precision serve both matrices (`tiles_triton.loss_tiles`).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from vecap_cli.core import tiles_triton as tiles
from vecap_cli.core.clip_triton import lse as _clip_lse


@triton.jit
def _cross_kernel(
    x_ptr, y_ptr, M, N, D, stride_x, stride_y,
    scale_ptr, u_ptr, v_ptr, DT, stride_u, stride_v, t_scale_ptr, lse_t_ptr,
    out_ptr,  # out: (M,)
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    PRECISION: tl.constexpr, UPCAST: tl.constexpr,
):  # fmt: skip
    rows, row_ok, x_rows = tiles.program_rows(x_ptr, stride_x, M, BLOCK_M)
    _, _, u_rows = tiles.program_rows(u_ptr, stride_u, M, BLOCK_M)
    scale = tl.load(scale_ptr)
    t_scale = tl.load(t_scale_ptr)
    lse_t = tl.load(lse_t_ptr + rows, mask=row_ok, other=float("inf"))
    acc = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        _, col_ok, s = tiles.column_tile(
            x_rows, row_ok, y_ptr, stride_y, n0, N, D, BLOCK_M, BLOCK_N, BLOCK_K, PRECISION, UPCAST
        )
        _, _, t = tiles.column_tile(
            u_rows, row_ok, v_ptr, stride_v, n0, N, DT, BLOCK_M, BLOCK_N, BLOCK_K, PRECISION, UPCAST
        )
        s = scale * s
        t = t_scale * t
        term = tl.exp(t - lse_t[:, None]) * (t - s)
        acc += tl.sum(tl.where(row_ok[:, None] & col_ok[None, :], term, 0.0), axis=1)
    tl.store(out_ptr + rows, acc, mask=row_ok)


@triton.jit
def _grad_kernel(
    x_ptr, y_ptr, M, N, D, stride_x, stride_y,
    scale_ptr, u_ptr, v_ptr, DT, stride_u, stride_v, t_scale_ptr,
    lse_sx_ptr, lse_tx_ptr, lse_sy_ptr, lse_ty_ptr,
    g_ptr, stride_g, gdot_ptr,  # out: G·Y (M, D), Σ_j G∘(X·Yᵀ) (M,)
    USE_LSE_X: tl.constexpr, USE_LSE_Y: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr, UPCAST: tl.constexpr,
):  # fmt: skip
    rows, row_ok, x_rows = tiles.program_rows(x_ptr, stride_x, M, BLOCK_M)
    _, _, u_rows = tiles.program_rows(u_ptr, stride_u, M, BLOCK_M)
    dcols, d_ok = tiles.program_slice(D, BLOCK_D)
    scale = tl.load(scale_ptr)
    t_scale = tl.load(t_scale_ptr)
    if USE_LSE_X:
        lse_sx = tl.load(lse_sx_ptr + rows, mask=row_ok, other=float("inf"))
        lse_tx = tl.load(lse_tx_ptr + rows, mask=row_ok, other=float("inf"))
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    gdot = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        cols, col_ok, dots = tiles.column_tile(
            x_rows, row_ok, y_ptr, stride_y, n0, N, D, BLOCK_M, BLOCK_N, BLOCK_K, PRECISION, UPCAST
        )
        _, _, t = tiles.column_tile(
            u_rows, row_ok, v_ptr, stride_v, n0, N, DT, BLOCK_M, BLOCK_N, BLOCK_K, PRECISION, UPCAST
        )
        s = scale * dots
        t = t_scale * t
        g = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        if USE_LSE_X:
            g += tl.exp(s - lse_sx[:, None]) - tl.exp(t - lse_tx[:, None])
        if USE_LSE_Y:
            lse_sy = tl.load(lse_sy_ptr + cols, mask=col_ok, other=float("inf"))
            lse_ty = tl.load(lse_ty_ptr + cols, mask=col_ok, other=float("inf"))
            g += tl.exp(s - lse_sy[None, :]) - tl.exp(t - lse_ty[None, :])
        g = tl.where(row_ok[:, None] & col_ok[None, :], g, 0.0)
        gdot += tl.sum(g * dots, axis=1)  # from fp32 G: rows of G sum to 0 (see clip_triton)
        acc = tiles.accumulate_rows(
            acc, g, y_ptr, cols, col_ok, dcols, d_ok, stride_y, PRECISION, UPCAST
        )
    tiles.store_slice(g_ptr, stride_g, acc, rows, row_ok, dcols, d_ok)
    tiles.store_row_sums(gdot_ptr, gdot, rows, row_ok)


def _teacher(u: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return u.to(like.dtype).contiguous()


def _cross_rows(x, y, scale, u, v, t_scale, lse_t):
    out = x.new_empty(x.shape[0], dtype=torch.float32)  # (m,)
    tiles.launch(
        _cross_kernel, x, y,
        scale, u, v, u.shape[1], u.stride(0), v.stride(0), t_scale, lse_t, out,
    )  # fmt: skip
    return out


def _grad_rows(x, y, scale, u, v, t_scale, lse_x, lse_y):
    """G·Y for rows X: lse_x = (lse_s, lse_t) of X's rows, lse_y of Y's, either None."""
    out = x.new_empty(x.shape, dtype=torch.float32)  # (m, D)
    gdot = x.new_empty(x.shape[0], dtype=torch.float32)  # (m,)
    dummy = (scale, scale)  # never read: the matching USE_LSE_* flag is off
    tiles.launch(
        _grad_kernel, x, y,
        scale, u, v, u.shape[1], u.stride(0), v.stride(0), t_scale,
        *(lse_x or dummy), *(lse_y or dummy),
        out, out.stride(0), gdot,
        lse_x is not None, lse_y is not None,
        d_slices=True,
    )  # fmt: skip
    return out, gdot


def forward(x, y, scale, u, v, t_scale, cols: bool):
    """(lse_s_x, lse_t_x, lse_s_y, lse_t_y, cross) as `distill.TorchKernels.forward`."""
    x, y = x.contiguous(), y.contiguous()
    u, v = _teacher(u, x), _teacher(v, x)
    lse_sx, lse_sy = _clip_lse(x, y, scale, cols)
    lse_tx, lse_ty = _clip_lse(u, v, t_scale, cols)
    cross = _cross_rows(x, y, scale, u, v, t_scale, lse_tx).sum()
    if cols:
        cross = cross + _cross_rows(y, x, scale, v, u, t_scale, lse_ty).sum()
    return lse_sx, lse_tx, lse_sy, lse_ty, cross


def grad(x, y, scale, u, v, t_scale, lse_sx, lse_tx, lse_sy, lse_ty):
    """(G·Y (m, D), Gᵀ·X (n, D), Σ G∘(X·Yᵀ)), fp32."""
    x, y = x.contiguous(), y.contiguous()
    u, v = _teacher(u, x), _teacher(v, x)
    x_side = (lse_sx, lse_tx)
    y_side = None if lse_sy is None else (lse_sy, lse_ty)
    gx, gdot = _grad_rows(x, y, scale, u, v, t_scale, x_side, y_side)
    gy, _ = _grad_rows(y, x, scale, v, u, t_scale, y_side, x_side)
    return gx, gy, gdot.sum()
