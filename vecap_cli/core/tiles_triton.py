"""Triton building blocks the contrastive-loss kernels share.

Imports triton at module level: import this only from the `*_triton` modules,
which the ops import lazily when they dispatch to Triton.

A loss kernel is one program per block of BLOCK_M rows of X (a gradient kernel:
and per BLOCK_D slice of D) walking every tile of BLOCK_N columns of Y. They all
take the same leading and trailing arguments, so `launch` starts any of them:

    kernel(x, y, M, N, D, stride_x, stride_y, <the op's own arguments>,
           BLOCK_M, BLOCK_N, BLOCK_K[, BLOCK_D], PRECISION, UPCAST)

Helpers are called once per tile, never per inner step: Triton's interpreter
(the CPU test path) re-patches the language on every @triton.jit call.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl


@dataclass(frozen=True)
class LossTiles:
    block_m: int  # rows of X per program
    block_n: int  # columns (rows of Y) per inner step
    block_k: int  # feature chunk of the S = X·Yᵀ reduction
    block_d: int  # feature slice of a gradient output per program
    num_warps: int
    precision: str  # tl.dot input_precision for fp32 operands
    upcast: bool  # do the dots in fp32 (see `loss_tiles`)


def loss_tiles(x: torch.Tensor) -> LossTiles:
    # fp32 features need IEEE dots: TF32's 10-bit mantissa alone breaks the 1e-5 target.
    exact = x.dtype == torch.float32
    if x.is_cuda:
        return LossTiles(64, 64, 32, 128, 4, "ieee" if exact else "tf32", upcast=False)
    # CPU tensors only reach Triton under TRITON_INTERPRET=1: small tiles keep
    # numpy fast, and the interpreter multiplies bf16 operands as raw uint16
    # bit patterns, so bf16 dots are done in fp32 there.
    upcast = x.dtype == torch.bfloat16
    return LossTiles(32, 32, 256, 512, 1, "ieee", upcast=upcast)


def launch(kernel, x: torch.Tensor, y: torch.Tensor, *args, d_slices: bool = False) -> None:
    """Run a loss kernel over X's rows; with `d_slices`, over slices of D too (the
    gradient kernels, whose programs each write a BLOCK_D slice of G·Y)."""
    m, d = x.shape
    tiles = loss_tiles(x)
    grid = [triton.cdiv(m, tiles.block_m)]
    blocks = [tiles.block_m, tiles.block_n, tiles.block_k]
    if d_slices:
        block_d = min(tiles.block_d, triton.next_power_of_2(d))
        grid.append(triton.cdiv(d, block_d))
        blocks.append(block_d)
    kernel[tuple(grid)](
        x, y, m, y.shape[0], d, x.stride(0), y.stride(0), *args,
        *blocks, tiles.precision, tiles.upcast, num_warps=tiles.num_warps,
    )  # fmt: skip


@triton.jit
def program_rows(x_ptr, stride_x, M, BLOCK_M: tl.constexpr):
    """This program's rows of X: indices (BLOCK_M,), which exist, pointers to their starts
    (BLOCK_M, 1)."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    return rows, rows < M, x_ptr + rows[:, None] * stride_x


@triton.jit
def program_slice(D, BLOCK_D: tl.constexpr):
    """A gradient program's slice of D: indices (BLOCK_D,), and which exist."""
    dcols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    return dcols, dcols < D


@triton.jit
def column_tile(
    x_rows,
    row_ok,
    y_ptr,
    stride_y,
    n0,
    N,
    D,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """The BLOCK_N columns of Y from n0 against this program's rows of X (`program_rows`):
    (cols, col_ok, X·Yᵀ (BLOCK_M, BLOCK_N) fp32). Out-of-range rows and columns read as zeros."""
    cols = n0 + tl.arange(0, BLOCK_N)
    col_ok = cols < N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, D, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < D
        a = tl.load(
            x_rows + ks[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0
        )  # (BLOCK_M, BLOCK_K)
        b = tl.load(
            y_ptr + cols[:, None] * stride_y + ks[None, :],
            mask=col_ok[:, None] & k_ok[None, :],
            other=0.0,
        )  # (BLOCK_N, BLOCK_K)
        if UPCAST:
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        acc = tl.dot(a, tl.trans(b), acc, input_precision=PRECISION)
    return cols, col_ok, acc


@triton.jit
def is_label(rows, cols, row_offset, col_offset):
    """Where column j is row i's label (j + col_offset = i + row_offset). (BLOCK_M, BLOCK_N)"""
    return (rows[:, None] + row_offset) == (cols[None, :] + col_offset)


@triton.jit
def is_group_label(rows, cols, row_offset, col_offset, row_group, col_group):
    """`is_label` between groups: row i's labels are the columns j with
    (j + col_offset) // col_group = (i + row_offset) // row_group (K positives per
    image: groups 1 and K from the images' side, K and 1 from the texts')."""
    return ((rows[:, None] + row_offset) // row_group) == (
        (cols[None, :] + col_offset) // col_group
    )


@triton.jit
def accumulate_rows(
    acc,
    g,
    y_ptr,
    cols,
    col_ok,
    dcols,
    d_ok,
    stride_y,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """acc + g·Y[cols, dcols]; g (BLOCK_M, BLOCK_N) fp32 is cast to Y's dtype for the dot."""
    y = tl.load(
        y_ptr + cols[:, None] * stride_y + dcols[None, :],
        mask=col_ok[:, None] & d_ok[None, :],
        other=0.0,
    )  # (BLOCK_N, BLOCK_D)
    g = g.to(y.dtype)
    if UPCAST:
        g = g.to(tl.float32)
        y = y.to(tl.float32)
    return tl.dot(g, y, acc, input_precision=PRECISION)


@triton.jit
def store_slice(g_ptr, stride_g, acc, rows, row_ok, dcols, d_ok):
    """This program's (BLOCK_M, BLOCK_D) slice of a gradient."""
    tl.store(
        g_ptr + rows[:, None] * stride_g + dcols[None, :], acc, mask=row_ok[:, None] & d_ok[None, :]
    )


@triton.jit
def store_row_sums(out_ptr, sums, rows, row_ok):
    """Per-row sums of a gradient kernel: every D slice computes them, the first writes them."""
    tl.store(out_ptr + rows, sums, mask=row_ok & (tl.program_id(1) == 0))
