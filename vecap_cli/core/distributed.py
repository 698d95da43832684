"""Feature gathering across ranks, with open_clip's semantics.

`torch.distributed.nn.all_gather` is differentiable: its backward sums every
rank's gradient for a slice and hands the sum to the rank that owns it, which
is what makes the local-loss form gradient-correct across ranks.
"""

from __future__ import annotations

import torch


def all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """(b, D) on each rank -> (world·b, D), rank-major; gradients flow back to owners."""
    import torch.distributed.nn  # lazy: the import pulls in the c10d bindings

    return torch.cat(torch.distributed.nn.all_gather(x), dim=0)


def _all_gather_no_grad(x: torch.Tensor, world_size: int) -> list[torch.Tensor]:
    parts = [torch.empty_like(x) for _ in range(world_size)]
    torch.distributed.all_gather(parts, x.contiguous())
    return parts


def gather_features(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    *,
    local_loss: bool,
    gather_with_grad: bool,
    rank: int,
    world_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """All ranks' features, (world·b, D) each, exactly as open_clip's `gather_features`."""
    if gather_with_grad:
        return all_gather_with_grad(image_features), all_gather_with_grad(text_features)
    images = _all_gather_no_grad(image_features, world_size)
    texts = _all_gather_no_grad(text_features, world_size)
    if not local_loss:
        # Without gather-with-grad the gathered copies are constants; put this rank's
        # own tensors back so its rows still carry gradient (open_clip does the same).
        images[rank] = image_features
        texts[rank] = text_features
    return torch.cat(images, dim=0), torch.cat(texts, dim=0)
