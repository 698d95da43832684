"""Feature gathering across ranks, with open_clip's semantics.

The gather with gradient is torch's functional collective `all_gather_single`
(`torch.distributed.nn.all_gather`, which open_clip 3.3 still calls, is
deprecated since torch 2.14). Its backward is a sum reduce-scatter: every
rank's gradient for a slice, summed, handed to the rank that owns it, exactly
what the old one did, and what makes the local-loss form gradient-correct
across ranks.
"""

from __future__ import annotations

import torch


def all_gather_with_grad(x: torch.Tensor, group=None) -> torch.Tensor:
    """(b, D) on each rank -> (world·b, D), rank-major; gradients flow back to owners.

    `group`: a process group, default the whole world.
    """
    # lazy: the functional collectives pull in the c10d bindings
    import torch.distributed._functional_collectives as funcol

    group = torch.distributed.group.WORLD if group is None else group
    # wait_tensor: a plain tensor for the kernels, still in the autograd graph
    return funcol.wait_tensor(funcol.all_gather_single(x.contiguous(), 0, group))


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
