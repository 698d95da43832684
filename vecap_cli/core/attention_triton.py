"""Triton flash attention, forward and backward (see `vecap_cli.core.attention`).

q (B, H, Nq, d), k and v (B, H, Nk, d), any lengths (boundary-masked tiles),
d padded to a power of two ≤ 256. Masks: causal (top-left aligned, key j
visible to query i iff j ≤ i, as SDPA's is_causal) and key padding (B, Nk).

Hot loops call no @triton.jit helpers except `_visible`/`_as_operand`: Triton's
interpreter re-patches the language on every helper call (milliseconds each),
which dominates test time on CPU.

Scores are kept in base 2 (scaled by log2 e) so the kernels use exp2. The
forward stores lse per query; a query that sees no key gets output 0 and
lse = +inf, which makes every recomputed probability exp2(s − lse) exactly 0
in backward instead of NaN. Backward is two kernels so nothing needs atomics:
one per key block (dk, dv) and one per query block (dq), both recomputing p.
The grid is (blocks, H, B), not (blocks, B·H): CUDA caps grid axes 1 and 2 at
65535, which B·H passes at B = 8192 with 8 heads.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

_LOG2E = 1.4426950408889634


@dataclass(frozen=True)
class AttnTiles:
    block_m: int  # queries per block
    block_n: int  # keys per block
    block_d: int  # head dim, padded to a power of two
    num_warps: int
    num_stages: int
    precision: str
    upcast: bool


def attn_tiles(q: torch.Tensor) -> AttnTiles:
    block_d = max(16, triton.next_power_of_2(q.shape[-1]))
    exact = q.dtype == torch.float32
    if q.is_cuda:
        block_n = 64 if block_d <= 64 else 32
        return AttnTiles(64, block_n, block_d, 4, 2, "ieee" if exact else "tf32", upcast=False)
    # Interpreter (CPU): unequal blocks so tests cross both kinds of tile edge;
    # bf16 dots in fp32 because the interpreter multiplies bf16 as raw uint16.
    return AttnTiles(64, 32, block_d, 1, 1, "ieee", upcast=q.dtype == torch.bfloat16)


@triton.jit
def _visible(offs_m, offs_n, n_ok, kpm_ptr, CAUSAL: tl.constexpr, HAS_KPM: tl.constexpr):
    """(BLOCK_M, BLOCK_N) bool: may query offs_m see key offs_n."""
    visible = n_ok[None, :] & (offs_m[:, None] >= 0)
    if CAUSAL:
        visible = visible & (offs_n[None, :] <= offs_m[:, None])
    if HAS_KPM:
        padded = tl.load(kpm_ptr + offs_n, mask=n_ok, other=1)
        visible = visible & (padded == 0)[None, :]
    return visible


@triton.jit
def _load_rows(ptr, offs, ok, stride, offs_d, d_ok, UPCAST: tl.constexpr):
    """(len(offs), BLOCK_D) rows of a (N, d) slice; zeros outside."""
    x = tl.load(
        ptr + offs[:, None] * stride + offs_d[None, :], mask=ok[:, None] & d_ok[None, :], other=0.0
    )
    if UPCAST:
        x = x.to(tl.float32)
    return x


@triton.jit
def _as_operand(p, like_ptr, UPCAST: tl.constexpr):
    """fp32 probabilities rounded to the inputs' dtype for a dot, as on the GPU."""
    p = p.to(like_ptr.dtype.element_ty)
    if UPCAST:
        p = p.to(tl.float32)
    return p


@triton.jit
def _attn_fwd(
    q_ptr, k_ptr, v_ptr, o_ptr, lse_ptr, kpm_ptr, qk_scale,
    sqb, sqh, sqn, skb, skh, skn, svb, svh, svn, sob, soh, son, skpm,
    H, NQ, NK, HEAD_DIM,
    CAUSAL: tl.constexpr, HAS_KPM: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr, UPCAST: tl.constexpr,
):  # fmt: skip
    start_m = tl.program_id(0)
    h = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)  # b·stride can pass 2**31 on large batches
    bh = b * H + h
    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    m_ok = offs_m < NQ
    d_ok = offs_d < HEAD_DIM
    # (BLOCK_M, BLOCK_D)
    q = _load_rows(q_ptr + b * sqb + h * sqh, offs_m, m_ok, sqn, offs_d, d_ok, UPCAST)
    k_base = k_ptr + b * skb + h * skh
    v_base = v_ptr + b * svb + h * svh
    kpm_base = kpm_ptr + b * skpm

    run_max = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    run_sum = tl.zeros((BLOCK_M,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    hi = NK
    if CAUSAL:
        hi = tl.minimum(NK, (start_m + 1) * BLOCK_M)  # later keys are invisible to this block
    for start_n in range(0, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        n_ok = offs_n < NK
        kv_mask = n_ok[:, None] & d_ok[None, :]
        k = tl.load(k_base + offs_n[:, None] * skn + offs_d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(v_base + offs_n[:, None] * svn + offs_d[None, :], mask=kv_mask, other=0.0)
        if UPCAST:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION)  # (BLOCK_M, BLOCK_N)
        s = tl.where(
            _visible(offs_m, offs_n, n_ok, kpm_base, CAUSAL, HAS_KPM), s * qk_scale, float("-inf")
        )
        new_max = tl.maximum(run_max, tl.max(s, axis=1))
        # A row with no visible key so far has new_max = -inf; exp2(-inf - -inf) would be NaN.
        safe_max = tl.where(new_max == float("-inf"), 0.0, new_max)
        p = tl.exp2(s - safe_max[:, None])
        alpha = tl.exp2(run_max - safe_max)
        run_sum = run_sum * alpha + tl.sum(p, axis=1)
        acc = tl.dot(
            _as_operand(p, v_ptr, UPCAST), v, acc * alpha[:, None], input_precision=PRECISION
        )
        run_max = new_max
    empty = run_sum == 0.0
    out = acc / tl.where(empty, 1.0, run_sum)[:, None]
    lse = tl.where(empty, float("inf"), run_max + tl.log2(tl.where(empty, 1.0, run_sum)))
    o_rows = o_ptr + b * sob + h * soh + offs_m[:, None] * son + offs_d[None, :]
    tl.store(o_rows, out.to(o_ptr.dtype.element_ty), mask=m_ok[:, None] & d_ok[None, :])
    tl.store(lse_ptr + bh * NQ + offs_m, lse, mask=m_ok)


@triton.jit
def _attn_bwd_dkdv(
    q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, dk_ptr, dv_ptr, kpm_ptr, qk_scale, sm_scale,
    sqb, sqh, sqn, skb, skh, skn, svb, svh, svn, sdb, sdh, sdn, skpm,
    H, NQ, NK, HEAD_DIM,
    CAUSAL: tl.constexpr, HAS_KPM: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr, UPCAST: tl.constexpr,
):  # fmt: skip
    start_n = tl.program_id(0)
    h = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)  # b·stride can pass 2**31 on large batches
    bh = b * H + h
    offs_n = start_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    n_ok = offs_n < NK
    d_ok = offs_d < HEAD_DIM
    # (BLOCK_N, BLOCK_D)
    k = _load_rows(k_ptr + b * skb + h * skh, offs_n, n_ok, skn, offs_d, d_ok, UPCAST)
    v = _load_rows(v_ptr + b * svb + h * svh, offs_n, n_ok, svn, offs_d, d_ok, UPCAST)
    q_base = q_ptr + b * sqb + h * sqh
    do_base = do_ptr + b * sdb + h * sdh
    kpm_base = kpm_ptr + b * skpm

    dk = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    dv = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    lo = 0
    if CAUSAL:
        lo = (start_n * BLOCK_N // BLOCK_M) * BLOCK_M  # earlier queries see none of these keys
    for start_m in range(lo, NQ, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        m_ok = offs_m < NQ
        qd_mask = m_ok[:, None] & d_ok[None, :]
        q = tl.load(q_base + offs_m[:, None] * sqn + offs_d[None, :], mask=qd_mask, other=0.0)
        do = tl.load(do_base + offs_m[:, None] * sdn + offs_d[None, :], mask=qd_mask, other=0.0)
        if UPCAST:
            q = q.to(tl.float32)
            do = do.to(tl.float32)
        lse = tl.load(lse_ptr + bh * NQ + offs_m, mask=m_ok, other=float("inf"))
        delta = tl.load(delta_ptr + bh * NQ + offs_m, mask=m_ok, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION)  # (BLOCK_M, BLOCK_N)
        visible = _visible(offs_m, offs_n, n_ok, kpm_base, CAUSAL, HAS_KPM) & m_ok[:, None]
        p = tl.where(visible, tl.exp2(s * qk_scale - lse[:, None]), 0.0)
        dv = tl.dot(tl.trans(_as_operand(p, q_ptr, UPCAST)), do, dv, input_precision=PRECISION)
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)  # (BLOCK_M, BLOCK_N)
        ds = p * (dp - delta[:, None])
        dk = tl.dot(tl.trans(_as_operand(ds, q_ptr, UPCAST)), q, dk, input_precision=PRECISION)
    kv_rows = offs_n[:, None] * skn + offs_d[None, :]
    mask = n_ok[:, None] & d_ok[None, :]
    tl.store(
        dk_ptr + b * skb + h * skh + kv_rows, (dk * sm_scale).to(dk_ptr.dtype.element_ty), mask=mask
    )
    tl.store(dv_ptr + b * skb + h * skh + kv_rows, dv.to(dv_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _attn_bwd_dq(
    q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, dq_ptr, kpm_ptr, qk_scale, sm_scale,
    sqb, sqh, sqn, skb, skh, skn, svb, svh, svn, sdb, sdh, sdn, skpm,
    H, NQ, NK, HEAD_DIM,
    CAUSAL: tl.constexpr, HAS_KPM: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr, UPCAST: tl.constexpr,
):  # fmt: skip
    start_m = tl.program_id(0)
    h = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)  # b·stride can pass 2**31 on large batches
    bh = b * H + h
    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    m_ok = offs_m < NQ
    d_ok = offs_d < HEAD_DIM
    # q, do: (BLOCK_M, BLOCK_D)
    q = _load_rows(q_ptr + b * sqb + h * sqh, offs_m, m_ok, sqn, offs_d, d_ok, UPCAST)
    do = _load_rows(do_ptr + b * sdb + h * sdh, offs_m, m_ok, sdn, offs_d, d_ok, UPCAST)
    lse = tl.load(lse_ptr + bh * NQ + offs_m, mask=m_ok, other=float("inf"))
    delta = tl.load(delta_ptr + bh * NQ + offs_m, mask=m_ok, other=0.0)
    k_base = k_ptr + b * skb + h * skh
    v_base = v_ptr + b * svb + h * svh
    kpm_base = kpm_ptr + b * skpm

    dq = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    hi = NK
    if CAUSAL:
        hi = tl.minimum(NK, (start_m + 1) * BLOCK_M)
    for start_n in range(0, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        n_ok = offs_n < NK
        kv_mask = n_ok[:, None] & d_ok[None, :]
        k = tl.load(k_base + offs_n[:, None] * skn + offs_d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(v_base + offs_n[:, None] * svn + offs_d[None, :], mask=kv_mask, other=0.0)
        if UPCAST:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION)  # (BLOCK_M, BLOCK_N)
        visible = _visible(offs_m, offs_n, n_ok, kpm_base, CAUSAL, HAS_KPM) & m_ok[:, None]
        p = tl.where(visible, tl.exp2(s * qk_scale - lse[:, None]), 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        ds = p * (dp - delta[:, None])
        dq = tl.dot(_as_operand(ds, q_ptr, UPCAST), k, dq, input_precision=PRECISION)
    q_rows = offs_m[:, None] * sqn + offs_d[None, :]
    mask = m_ok[:, None] & d_ok[None, :]
    tl.store(
        dq_ptr + b * sqb + h * sqh + q_rows, (dq * sm_scale).to(dq_ptr.dtype.element_ty), mask=mask
    )


def _bhn(t: torch.Tensor) -> tuple[int, int, int]:
    return t.stride(0), t.stride(1), t.stride(2)


def _kpm_args(key_padding_mask, q):
    if key_padding_mask is None:
        return torch.empty(1, dtype=torch.int8, device=q.device), 0, False
    kpm = key_padding_mask.to(torch.int8).contiguous()  # (B, Nk), 1 = padding
    return kpm, kpm.stride(0), True


def _last_dim_contiguous(*ts):
    return [t if t.stride(-1) == 1 else t.contiguous() for t in ts]


def forward(q, k, v, causal: bool, key_padding_mask, scale: float):
    """(o (B, H, Nq, d) in q's dtype, lse (B, H, Nq) fp32 base-2)."""
    q, k, v = _last_dim_contiguous(q, k, v)
    B, H, NQ, d = q.shape
    NK = k.shape[2]
    tiles = attn_tiles(q)
    o = torch.empty_like(q, memory_format=torch.contiguous_format)
    lse = torch.empty(B, H, NQ, device=q.device, dtype=torch.float32)
    kpm, skpm, has_kpm = _kpm_args(key_padding_mask, q)
    _attn_fwd[(triton.cdiv(NQ, tiles.block_m), H, B)](
        q, k, v, o, lse, kpm, scale * _LOG2E,
        *_bhn(q), *_bhn(k), *_bhn(v), *_bhn(o), skpm,
        H, NQ, NK, d, causal, has_kpm,
        tiles.block_m, tiles.block_n, tiles.block_d, tiles.precision, tiles.upcast,
        num_warps=tiles.num_warps, num_stages=tiles.num_stages,
    )  # fmt: skip
    return o, lse


def backward(do, q, k, v, o, lse, causal: bool, key_padding_mask, scale: float):
    """(dq, dk, dv) in the inputs' dtypes."""
    # Contiguous copies so that dq, dk, dv can be stored with q's and k's strides.
    do, q, k, v = (t.contiguous() for t in (do, q, k, v))
    B, H, NQ, d = q.shape
    NK = k.shape[2]
    tiles = attn_tiles(q)
    delta = (do.float() * o.float()).sum(dim=-1).contiguous()  # (B, H, Nq): rowsum(dO∘O)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    kpm, skpm, has_kpm = _kpm_args(key_padding_mask, q)
    common = (
        *_bhn(q), *_bhn(k), *_bhn(v), *_bhn(do), skpm, H, NQ, NK, d, causal, has_kpm,
        tiles.block_m, tiles.block_n, tiles.block_d, tiles.precision, tiles.upcast,
    )  # fmt: skip
    launch = {"num_warps": tiles.num_warps, "num_stages": tiles.num_stages}
    _attn_bwd_dkdv[(triton.cdiv(NK, tiles.block_n), H, B)](
        q, k, v, do, lse, delta, dk, dv, kpm, scale * _LOG2E, scale, *common, **launch
    )
    _attn_bwd_dq[(triton.cdiv(NQ, tiles.block_m), H, B)](
        q, k, v, do, lse, delta, dq, kpm, scale * _LOG2E, scale, *common, **launch
    )
    return dq, dk, dv
