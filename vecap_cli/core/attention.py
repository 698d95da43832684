"""Flash attention: softmax(q·kᵀ·scale + masks)·v without the (Nq, Nk) matrix in memory.

The chain, imports going down:

    flash_attention      functional, dispatches on device (`vecap_cli.core.dispatch`)
    _FlashAttention      autograd.Function over `attention_triton` (CUDA)
    _attention_torch     CPU path and fallback: torch's SDPA with the same mask semantics

`attention_reference` writes the formula out; it is the oracle of the tests.
`attention_patch.use_fused_attention` puts this under open_clip's towers.

Shapes: q (B, H, Nq, d), k and v (B, H, Nk, d); Nq may differ from Nk
(cross-attention). `causal=True` lets query i see keys j ≤ i (top-left aligned,
as SDPA's is_causal). `key_padding_mask` (B, Nk) bool marks keys to ignore,
True = padding, as in nn.MultiheadAttention. A query that sees no key at all
returns zeros (and zero gradients), never NaN.
"""

from __future__ import annotations

import importlib

import torch
import torch.nn.functional as F

from vecap_cli.core.dispatch import choose_backend

_MAX_TRITON_HEAD_DIM = 256


def _visible(q, k, causal, key_padding_mask):
    """(B or 1, 1, Nq, Nk) bool, True where a query may see a key; None if all may."""
    nq, nk = q.shape[-2], k.shape[-2]
    visible = None
    if causal:
        visible = torch.ones(nq, nk, dtype=torch.bool, device=q.device).tril()[None, None]
    if key_padding_mask is not None:
        keys = ~key_padding_mask.to(device=q.device, dtype=torch.bool)[:, None, None, :]
        visible = keys if visible is None else visible & keys
    return visible


def attention_reference(q, k, v, causal=False, key_padding_mask=None, scale=None):
    """Plain softmax attention with the masks applied; queries with no key give zeros."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = (q @ k.transpose(-2, -1)) * scale  # (B, H, Nq, Nk)
    visible = _visible(q, k, causal, key_padding_mask)
    if visible is None:
        return torch.softmax(scores, dim=-1) @ v
    has_key = visible.any(dim=-1, keepdim=True)  # (B, 1, Nq, 1)
    # Rows with no visible key attend everywhere, then are zeroed: no -inf-only softmax.
    scores = scores.masked_fill(~(visible | ~has_key), float("-inf"))
    return (torch.softmax(scores, dim=-1) * has_key) @ v


def _attention_torch(q, k, v, causal, key_padding_mask, scale):
    if key_padding_mask is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale)
    visible = _visible(q, k, causal, key_padding_mask)
    has_key = visible.any(dim=-1, keepdim=True)  # (B, 1, Nq, 1)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=visible | ~has_key, scale=scale)
    return out * has_key.to(out.dtype)


class _FlashAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, causal, key_padding_mask, scale):
        kernels = importlib.import_module("vecap_cli.core.attention_triton")
        o, lse = kernels.forward(q, k, v, causal, key_padding_mask, scale)
        ctx.save_for_backward(q, k, v, o, lse, key_padding_mask)
        ctx.kernels, ctx.causal, ctx.scale = kernels, causal, scale
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse, key_padding_mask = ctx.saved_tensors
        dq, dk, dv = ctx.kernels.backward(
            do, q, k, v, o, lse, ctx.causal, key_padding_mask, ctx.scale
        )
        return dq, dk, dv, None, None, None


def _check(q, k, v, key_padding_mask):
    if q.ndim != 4 or k.shape != v.shape or k.shape[:2] != q.shape[:2] or k.shape[3] != q.shape[3]:
        raise ValueError(
            f"expected q (B, H, Nq, d) and k, v (B, H, Nk, d); got {tuple(q.shape)}, "
            f"{tuple(k.shape)}, {tuple(v.shape)}"
        )
    if key_padding_mask is not None and tuple(key_padding_mask.shape) != (k.shape[0], k.shape[2]):
        raise ValueError(f"key_padding_mask must be (B, Nk), got {tuple(key_padding_mask.shape)}")


def flash_attention(q, k, v, causal=False, key_padding_mask=None, scale=None, *, backend=None):
    """softmax(q·kᵀ·scale, masked)·v; scale defaults to d^-½. See the module docstring."""
    _check(q, k, v, key_padding_mask)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    if choose_backend(q, backend) == "triton":
        if q.shape[-1] > _MAX_TRITON_HEAD_DIM:
            raise ValueError(f"Triton attention supports head dims up to {_MAX_TRITON_HEAD_DIM}")
        return _FlashAttention.apply(q, k, v, causal, key_padding_mask, scale)
    return _attention_torch(q, k, v, causal, key_padding_mask, scale)
