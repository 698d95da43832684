"""What every backend shares: the per-item failure, a per-item prompt and the device choice."""

from __future__ import annotations

import os
from dataclasses import dataclass

from vecap_cli.errors import VecapError
from vecap_cli.stream.images import DEFAULT_LIMITS, ImageLimits, decode


@dataclass(frozen=True, slots=True)
class Failed:
    """A generation that failed for this item only (a server gave up on one request)."""

    reason: str  # short, a counter name: "http-503", "timeout", "bad-response"
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Prompted:
    """A prepared image with a prompt of its own, sent instead of the captioner's
    (caption --condition-on: the AltText quoted in it). Backends that read a prompt
    (`Backend.takes_prompt`) accept it wherever they accept a prepared image."""

    item: object
    prompt: str


def resolve_device(device: str) -> str:
    """'auto' → 'cuda' when a GPU is visible, else 'cpu'; anything else as given."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise VecapError(f"--device {device}: no CUDA device is visible")
    return device


def on_gpu(device: str) -> bool:
    """Whether a model on `device` runs on a GPU ('auto': when one is visible)."""
    if device == "auto":
        import torch

        return torch.cuda.is_available()
    return device.startswith("cuda")


def share_cores(processes: int) -> None:
    """torch's threads in one of `processes` worker processes: together, no more
    than the cores this process may run on (more would wait on each other)."""
    import torch

    torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // processes))


def default_dtype(device: str):
    """bf16 on GPUs (what VLMs are released in), fp32 on CPU (bf16 matmuls are slow there)."""
    import torch

    return torch.bfloat16 if device.startswith("cuda") else torch.float32


def decode_rgb(data: bytes, limits: ImageLimits = DEFAULT_LIMITS):
    """A fully decoded RGB PIL image (now, in the worker thread, not lazily in the
    model's), within the byte and pixel caps; ImageRejected otherwise."""
    return decode(data, limits)
