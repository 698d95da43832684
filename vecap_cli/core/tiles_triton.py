"""Triton building blocks the contrastive-loss kernels share.

Imports triton at module level: import this only from the `*_triton` modules,
which the ops import lazily when they dispatch to Triton.

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
    upcast: bool  # do the dots in fp32 (see `mma`)


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


@triton.jit
def logits_tile(
    x_ptr,
    y_ptr,
    rows,
    cols,
    row_ok,
    col_ok,
    D,
    stride_x,
    stride_y,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """X[rows]·Y[cols]ᵀ, (BLOCK_M, BLOCK_N) fp32; out-of-range rows/cols read as zeros."""
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, D, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < D
        a = tl.load(
            x_ptr + rows[:, None] * stride_x + ks[None, :],
            mask=row_ok[:, None] & k_ok[None, :],
            other=0.0,
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
    return acc


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
