"""Which implementation runs an op: Triton kernels or the tiled torch path.

CUDA tensors run Triton (when it is installed), everything else runs torch. The
environment variable `VECAP_KERNELS=torch|triton` forces one side for every op;
an op's own `backend=` argument wins over both. The variable is read at call
time, never at import, so a process can flip it between calls (tests do).

Forcing `triton` on CPU tensors only works under Triton's interpreter
(`TRITON_INTERPRET=1`, set before the kernels are first imported).
"""

from __future__ import annotations

import functools
import importlib.util
import os
from typing import Literal

import torch

ENV_VAR = "VECAP_KERNELS"
Backend = Literal["torch", "triton"]
_CHOICES = ("auto", "torch", "triton")


@functools.cache
def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def choose_backend(tensor: torch.Tensor, backend: str | None = None) -> Backend:
    """The backend for an op whose main input is `tensor`."""
    choice = (backend or os.environ.get(ENV_VAR, "") or "auto").strip().lower()
    if choice not in _CHOICES:
        raise ValueError(f"{ENV_VAR} / backend must be one of {_CHOICES}, got {choice!r}")
    if choice == "auto":
        return "triton" if tensor.is_cuda and triton_available() else "torch"
    if choice == "triton" and not triton_available():
        raise RuntimeError(
            f"backend 'triton' was asked for ({ENV_VAR}) but triton is not installed"
        )
    return choice  # type: ignore[return-value]
