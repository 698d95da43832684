"""What the tiled losses share on the torch side: row chunks, the kernel set, arguments.

An op (`clip`, `siglip`) computes through a kernel set: its `*_triton` module
when dispatch picks Triton, else its `TorchKernels`, which walks S a chunk of
rows at a time (`row_chunks`). The Triton side's shared pieces are in
`tiles_triton`, imported only with a Triton kernel set.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from types import ModuleType
from typing import TypeVar

import torch

from vecap_cli.core.dispatch import choose_backend

# Elements of S held at once by the torch path (fp32: 32 MiB). Its working set is
# a few such chunks plus O(B·D) buffers, independent of B².
TILE_ELEMENTS = 1 << 23

Kernels = TypeVar("Kernels")


def row_chunks(m: int, n: int, rows: int = 0) -> Iterator[tuple[int, int]]:
    """(start, stop) of each chunk of rows of an (m, n) S: `rows` at a time, or with
    0 as many as fit in TILE_ELEMENTS (read at call time, so tests can shrink it)."""
    step = rows or max(1, min(m, TILE_ELEMENTS // max(n, 1)))
    for start in range(0, m, step):
        yield start, min(start + step, m)


def pick_kernels(
    features: torch.Tensor, backend: str | None, triton_module: str, torch_kernels: Kernels
) -> Kernels | ModuleType:
    """The kernel set for an op on `features`: its Triton module (imported only here,
    so Triton loads on first use) or its torch kernels."""
    if choose_backend(features, backend) == "triton":
        return importlib.import_module(triton_module)
    return torch_kernels


def as_scale(logit_scale, like: torch.Tensor) -> torch.Tensor:
    """logit_scale as a 0-dim fp32 tensor on `like`'s device, still differentiable."""
    if not isinstance(logit_scale, torch.Tensor):
        return torch.tensor(float(logit_scale), device=like.device)
    return logit_scale.to(device=like.device, dtype=torch.float32).reshape(())


def check_features(image_features: torch.Tensor, text_features: torch.Tensor) -> None:
    if image_features.ndim != 2 or image_features.shape[1:] != text_features.shape[1:]:
        raise ValueError(
            f"features must be (B, D) with equal D, got {tuple(image_features.shape)} "
            f"and {tuple(text_features.shape)}"
        )
