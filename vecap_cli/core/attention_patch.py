"""Run open_clip's towers on `flash_attention` without forking open_clip.

`use_fused_attention(model)` changes, in place, the class of every
`nn.MultiheadAttention` (open_clip's default blocks, the attentional pooler,
CoCa's cross-attention) and every open_clip `Attention` (its "custom" blocks)
to a subclass whose forward calls `flash_attention`. Parameters, state_dict
keys and checkpoints are untouched; `restore_attention(model)` swaps back.

Masks: open_clip hands its text tower's causal mask over as an additive (L, L)
tensor of 0/−inf; it is recognised and run as `causal=True`, never as a bias.
TextTransformer's pad/cls masks (B·H, L, L) are split into causal + key
padding. Recognising a mask reads it once (a device sync) and is cached per
mask tensor, so the fixed buffer of a text tower costs one check per layer for
the model's lifetime. Anything the kernel cannot express (a real additive
bias, need_weights=True, attention dropout while training, bias_k/v, scaled
cosine attention) falls back to the original forward, so the patch never
changes what is computed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.weak import WeakIdKeyDictionary

from vecap_cli.core.attention import flash_attention

try:  # open_clip is a dependency, but the core must not need it to import
    from open_clip.transformer import Attention as _OpenClipAttention
except ImportError:  # pragma: no cover
    _OpenClipAttention = None

_MAX_HEAD_DIM = 256


@dataclass(frozen=True)
class MaskPlan:
    causal: bool
    key_padding_mask: torch.Tensor | None  # (B, Nk) bool, True = padding


_NO_MASK = MaskPlan(causal=False, key_padding_mask=None)
_plans: WeakIdKeyDictionary = WeakIdKeyDictionary()  # mask tensor -> (version, plan | None)


def _blocked(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(True where attention is forbidden, 0-dim flag: the mask is only 0/−inf)."""
    if mask.dtype == torch.bool:
        return mask, torch.ones((), dtype=torch.bool, device=mask.device)
    blocked = torch.isneginf(mask)
    return blocked, ((mask == 0) | blocked).all()


def _decode(mask: torch.Tensor, batch: int, heads: int) -> MaskPlan | None:
    """A (L, S), (B·H, L, S) or (B, H, L, S) attention mask as causal + key padding."""
    blocked, plain = _blocked(mask)
    nq, nk = blocked.shape[-2:]
    if blocked.ndim == 2:
        blocked = blocked[None, None]
    blocked = blocked.reshape(-1, heads if blocked.shape[0] != 1 else 1, nq, nk)
    same_heads = (blocked == blocked[:, :1]).all()
    blocked = blocked[:, 0]  # (B or 1, L, S)
    pad = blocked.all(dim=1)  # (B or 1, S): keys no query may see
    future = torch.ones(nq, nk, dtype=torch.bool, device=mask.device).triu(1)  # j > i
    is_padding = (blocked == pad[:, None, :]).all()
    is_causal = (blocked == (future | pad[:, None, :])).all()
    flags = torch.stack([plain, same_heads, is_padding, is_causal, pad.any()]).tolist()
    plain, same_heads, is_padding, is_causal, any_pad = flags  # one device sync
    if not (plain and same_heads and (is_padding or is_causal)):
        return None
    kpm = pad.expand(batch, nk) if any_pad else None
    return MaskPlan(causal=not is_padding, key_padding_mask=kpm)


def mask_plan(
    attn_mask, key_padding_mask, is_causal: bool, batch: int, heads: int
) -> MaskPlan | None:
    """How to run these masks on `flash_attention`, or None when it cannot."""
    plan = _NO_MASK if attn_mask is None else _cached_decode(attn_mask, batch, heads)
    if plan is None:
        return None
    causal = plan.causal or (is_causal and attn_mask is None)
    kpm = plan.key_padding_mask
    if key_padding_mask is not None:
        extra, plain = _blocked(key_padding_mask)
        if not plain.item():
            return None
        kpm = extra if kpm is None else kpm | extra
    return MaskPlan(causal=causal, key_padding_mask=kpm)


def _cached_decode(mask, batch, heads):
    hit = _plans.get(mask)
    if hit is not None and hit[0] == mask._version:
        plan = hit[1]
    else:
        plan = _decode(mask, batch, heads)
        _plans[mask] = (mask._version, plan)
    if (
        plan is not None
        and plan.key_padding_mask is not None
        and plan.key_padding_mask.shape[0] != batch
    ):
        return MaskPlan(plan.causal, plan.key_padding_mask[:1].expand(batch, -1))
    return plan


# -- nn.MultiheadAttention --------------------------------------------------------


def _mha_in_proj(mha: nn.MultiheadAttention, query, key, value):
    if mha._qkv_same_embed_dim:
        if query is key and key is value:  # self-attention: one matmul
            return F.linear(query, mha.in_proj_weight, mha.in_proj_bias).chunk(3, dim=-1)
        w_q, w_k, w_v = mha.in_proj_weight.chunk(3)
    else:
        w_q, w_k, w_v = mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight
    b_q, b_k, b_v = (None,) * 3 if mha.in_proj_bias is None else mha.in_proj_bias.chunk(3)
    return F.linear(query, w_q, b_q), F.linear(key, w_k, b_k), F.linear(value, w_v, b_v)


def _heads(x, num_heads):
    b, n, e = x.shape
    return x.view(b, n, num_heads, e // num_heads).transpose(1, 2)  # (B, H, N, d)


class FusedMultiheadAttention(nn.MultiheadAttention):
    """nn.MultiheadAttention whose forward runs `flash_attention` when it can."""

    def _fusable(self, query, need_weights) -> bool:
        return (
            query.dim() == 3
            and not need_weights
            and self.bias_k is None
            and not self.add_zero_attn
            and not (self.training and self.dropout > 0)
            and self.head_dim <= _MAX_HEAD_DIM
        )

    def forward(
        self,
        query,
        key,
        value,
        key_padding_mask=None,
        need_weights=True,
        attn_mask=None,
        average_attn_weights=True,
        is_causal=False,
    ):
        plan = None
        if self._fusable(query, need_weights):
            batch = query.shape[0 if self.batch_first else 1]
            plan = mask_plan(attn_mask, key_padding_mask, is_causal, batch, self.num_heads)
        if plan is None:
            return super().forward(
                query,
                key,
                value,
                key_padding_mask=key_padding_mask,
                need_weights=need_weights,
                attn_mask=attn_mask,
                average_attn_weights=average_attn_weights,
                is_causal=is_causal,
            )
        return self._fused(query, key, value, plan), None

    def _fused(self, query, key, value, plan: MaskPlan):
        if not self.batch_first:  # (L, B, E) -> (B, L, E), keeping `is` identity for self-attention
            same = query is key and key is value
            query = query.transpose(0, 1)
            key, value = (query, query) if same else (key.transpose(0, 1), value.transpose(0, 1))
        q, k, v = (_heads(t, self.num_heads) for t in _mha_in_proj(self, query, key, value))
        out = flash_attention(q, k, v, causal=plan.causal, key_padding_mask=plan.key_padding_mask)
        out = out.transpose(1, 2).flatten(2)  # (B, Lq, E)
        out = F.linear(out, self.out_proj.weight, self.out_proj.bias)
        return out if self.batch_first else out.transpose(0, 1)


# -- open_clip's Attention (block_type="custom") ------------------------------------

if _OpenClipAttention is not None:

    class FusedOpenClipAttention(_OpenClipAttention):
        """open_clip's Attention (3.x) with the SDPA call replaced by `flash_attention`."""

        def forward(self, x, attn_mask=None):
            plan = None
            if self.logit_scale is None and not (self.training and self.attn_drop.p > 0):
                plan = mask_plan(attn_mask, None, False, x.shape[0], self.num_heads)
            if plan is None:
                return super().forward(x, attn_mask=attn_mask)
            q, k, v = (
                _heads(t, self.num_heads)
                for t in F.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
            )
            q, k = self.ln_q(q), self.ln_k(k)
            out = flash_attention(
                q,
                k,
                v,
                causal=plan.causal,
                key_padding_mask=plan.key_padding_mask,
                scale=self.scale,
            )  # (N, H, L, d)
            if self.head_scale is not None:
                out = out * self.head_scale
            out = self.ln_inner(out.transpose(1, 2).flatten(2))
            return self.out_drop(self.out_proj(out))


def _swaps():
    pairs = [(nn.MultiheadAttention, FusedMultiheadAttention)]
    if _OpenClipAttention is not None:
        pairs.append((_OpenClipAttention, FusedOpenClipAttention))
    return pairs


def use_fused_attention(model: nn.Module) -> int:
    """Make every attention module of `model` run `flash_attention`; returns how many."""
    return _swap_classes(model, {base: fused for base, fused in _swaps()})


def restore_attention(model: nn.Module) -> int:
    """Undo `use_fused_attention`; returns how many modules were swapped back."""
    return _swap_classes(model, {fused: base for base, fused in _swaps()})


def _swap_classes(model: nn.Module, to: dict[type, type]) -> int:
    count = 0
    for module in model.modules():
        new = to.get(type(module))
        if new is not None:
            module.__class__ = new
            count += 1
    return count
