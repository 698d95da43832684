"""Text towers on the tokens that matter.

open_clip pads every caption to the full context (77 tokens) and its CLIP text
tower pools one position: the end-of-text token (`argmax`/`eos` pooling). Under
the causal mask that position sees nothing after it, so the padding beyond the
batch's last pooled position is dead work: a 15-word caption needs ~20 of 77
positions. `trimmed_text_encoder` runs open_clip's own modules on that prefix;
the features are the same up to float rounding (shorter matrix products may
round the last bit differently, as a different batch size does).

It applies only where that argument holds (an open_clip `CLIP` with a causal
mask and argmax/eos pooling), and is checked on a probe batch against
`model.encode_text` when it is built: a model it does not fit, or an open_clip
whose `encode_text` changed, falls back to `encode_text`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def trimmed_text_encoder(model) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """`encode_text` over the needed prefix of the context, or None where it cannot be used."""
    import open_clip
    from open_clip.transformer import text_global_pool

    if type(model) is not open_clip.CLIP or model.attn_mask is None:
        return None
    pool, eos = model.text_pool_type, getattr(model, "text_eos_id", None)
    if pool not in ("argmax", "eos") or (pool == "eos" and eos is None):
        return None

    def encode_text(text: torch.Tensor) -> torch.Tensor:
        pooled = text.argmax(dim=-1) if pool == "argmax" else (text == eos).int().argmax(dim=-1)
        n = int(pooled.max()) + 1
        text = text[:, :n]  # (B, n)
        cast_dtype = model.transformer.get_cast_dtype()
        x = model.token_embedding(text).to(cast_dtype)
        x = x + model.positional_embedding[:n].to(cast_dtype)
        x = model.transformer(x, attn_mask=model.attn_mask[:n, :n])
        x = model.ln_final(x)  # (B, n, width)
        x = text_global_pool(x, text, pool, eos_token_id=eos)
        if isinstance(model.text_projection, torch.nn.Linear):
            return model.text_projection(x)
        return x if model.text_projection is None else x @ model.text_projection

    return encode_text if _agrees(model, encode_text, eos) else None


def _agrees(model, encode_text, eos: int | None) -> bool:
    """Same features as `model.encode_text` on two padded probe captions."""
    context, vocab = model.context_length, model.vocab_size
    device = model.positional_embedding.device
    end = vocab - 1 if eos is None else eos  # argmax pooling: the end token has the top id
    probe = torch.zeros(2, context, dtype=torch.long)
    for row, length in enumerate((min(5, context), min(9, context))):
        probe[row, : length - 1] = torch.arange(1, length) * 7 % max(1, end - 1) + 1
        probe[row, length - 1] = end
    probe = probe.to(device)
    with torch.inference_mode():
        try:
            full, trimmed = model.encode_text(probe), encode_text(probe)
        except (RuntimeError, IndexError, AssertionError):
            return False
    return full.shape == trimmed.shape and torch.allclose(full, trimmed, atol=1e-5, rtol=1e-4)
