"""A text tower's context length: how many tokens an open_clip model reads.

`stretch` resizes a positional table the way Long-CLIP does ("knowledge-preserved
stretching", Zhang et al., "Long-CLIP: Unlocking the Long-Text Capability of
CLIP", ECCV 2024, arXiv 2403.15378; beichenzbc/Long-CLIP, model/longclip.py
`load_from_clip`): the first 20 positions, which CLIP's short web captions
trained well, are kept as they are; the rest are linearly interpolated to fill
the new length. Long-CLIP stretches 77 positions to 248 = 4·77 − 3·20, every
old gap split in four; `stretch` takes any length and for 248 gives exactly
Long-CLIP's table. Shorter than the table: its first rows (truncation; a causal
tower's text that fits gives the same embedding).

`set_context_length` applies that to a built open_clip model in place (CLIP,
CustomTextCLIP, CoCa): the table, the causal mask, the recorded length.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vecap_cli.errors import VecapError

if TYPE_CHECKING:  # torch loads when a model is resized, not for `--help`
    import torch
    from torch import nn

KEEP = 20  # Long-CLIP's kept positions
MAX_CONTEXT_LENGTH = 4096  # (L, L) causal masks per tower; far past any caption


def check_context_length(length: int, what: str = "--context-length") -> int:
    if not isinstance(length, int) or isinstance(length, bool):
        raise VecapError(f"{what}: {length!r} is not a number of tokens")
    if not 2 <= length <= MAX_CONTEXT_LENGTH:
        raise VecapError(f"{what}: {length} tokens; choose from 2 to {MAX_CONTEXT_LENGTH}")
    return length


def stretch(table: torch.Tensor, length: int, keep: int = KEEP) -> torch.Tensor:
    """(n, D) positional table -> (length, D).

    Longer: row p < keep is row p; row p >= keep is the old table read at
    x = keep + (p - keep)·(n - keep)/(length - keep), linear between the two rows
    around x and, past the last row, along the last gap (as Long-CLIP's last four
    rows are). Fewer than keep + 2 rows: keep what leaves two to interpolate.
    """
    import torch

    n = table.shape[0]
    if length <= n:
        return table[:length].clone()
    if n < 2:
        raise VecapError(f"a text tower of {n} position cannot be stretched")
    keep = max(0, min(keep, n - 2))
    p = torch.arange(keep, length, dtype=torch.float64)
    x = keep + (p - keep) * (n - keep) / (length - keep)
    left = x.floor().long().clamp(max=n - 2)  # past n - 1: extrapolate along the last gap
    w = (x - left).to(table.dtype)[:, None]
    tail = table[left] * (1 - w) + table[left + 1] * w
    return torch.cat([table[:keep], tail]).contiguous()


def _causal_mask(n: int, like: torch.Tensor) -> torch.Tensor:
    """open_clip's additive causal mask: 0 on and below the diagonal, −inf above."""
    import torch

    mask = torch.full((n, n), float("-inf"), device=like.device, dtype=like.dtype)
    return mask.triu_(1)


def _text_tower(model: nn.Module) -> nn.Module:
    """The module that holds the text positions: CLIP keeps them on itself, the
    others on `model.text`."""
    from torch import nn

    for tower in (model, getattr(model, "text", None)):
        if isinstance(getattr(tower, "positional_embedding", None), nn.Parameter):
            return tower
    raise VecapError(
        f"--context-length: {type(model).__name__}'s text tower has no positional table "
        "to resize (Hugging Face text towers keep their own length)"
    )


def context_length(model: nn.Module) -> int | None:
    """The tokens an open_clip model's text tower reads, None when it has no table."""
    try:
        return int(_text_tower(model).context_length)
    except VecapError:
        return None


def set_context_length(model: nn.Module, length: int) -> int:
    """Make `model`'s text tower read `length` tokens; returns the length it had."""
    import torch
    from torch import nn

    check_context_length(length)
    tower = _text_tower(model)
    old = int(tower.context_length)
    table = tower.positional_embedding.data  # (old [+1 for CoCa's CLS], D)
    cls = table.shape[0] - old  # CoCa appends a CLS token: its row stays the last
    new = stretch(table[:old], length)
    if cls:
        new = torch.cat([new, table[old:]])
    grad = tower.positional_embedding.requires_grad
    tower.positional_embedding = nn.Parameter(new, requires_grad=grad)
    tower.context_length = length
    if hasattr(tower, "num_pos"):
        tower.num_pos = length + cls
    if getattr(tower, "attn_mask", None) is not None:
        tower.attn_mask = _causal_mask(length + cls, tower.attn_mask)
    model.context_length = length
    decoder = getattr(model, "text_decoder", None)  # CoCa: reads the text's tokens but the last
    if decoder is not None and getattr(decoder, "attn_mask", None) is not None:
        decoder.context_length = length
        decoder.attn_mask = _causal_mask(length, decoder.attn_mask)
    return old


def with_context_length(model_cfg: dict, length: int) -> dict:
    """An open_clip model config (as open_clip_config.json holds it) for `length` tokens:
    what open_clip builds and tokenizes from it reads that many."""
    cfg = {**model_cfg, "text_cfg": {**model_cfg["text_cfg"], "context_length": length}}
    if "multimodal_cfg" in cfg:  # CoCa's decoder reads the same tokens
        cfg["multimodal_cfg"] = {**cfg["multimodal_cfg"], "context_length": length}
    return cfg
