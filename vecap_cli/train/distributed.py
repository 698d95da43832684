"""A training run's ranks: torchrun (DDP) and Slurm's srun, gloo on CPU, NCCL on GPU.

`RunOptions` brings the placement already resolved (rank, world size, local
rank, rendezvous; see `vecap_cli.placement`); the device and the group are
the ones eval takes too (`vecap_cli.process_group`).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from vecap_cli.placement import Placement
from vecap_cli.process_group import join, pick_device


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup(placement: Placement, preference: str = "auto", log=lambda line: None) -> Dist:
    """This rank's device, in the group of all ranks when there are several."""
    device = pick_device(preference, placement)
    # open_clip's and the core's differentiable gather: a deprecation notice, once per rank
    warnings.filterwarnings("ignore", "torch.distributed.nn.functional.all_gather is deprecated")
    join(placement, device, log)
    return Dist(placement.rank, placement.world_size, device)


def cpu_threads(device: torch.device, workers: int) -> None:
    """On CPU, compute takes the cores the data workers leave (at least one).

    Oversubscribed OpenMP threads spin against the decoders: on two cores, two
    compute threads beside a data worker ran a tiny model's step several times
    slower than one. An explicit OMP_NUM_THREADS (torchrun sets 1) wins.
    """
    if device.type != "cpu" or "OMP_NUM_THREADS" in os.environ:
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    torch.set_num_threads(max(1, (cores or 1) - workers))


def mean(value: float, ctx: Dist) -> float:
    """The mean of a scalar over ranks (the global loss from each rank's local loss)."""
    if ctx.world_size == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t)
    return t.item() / ctx.world_size


def gather(obj, ctx: Dist) -> list:
    """Every rank's `obj` (picklable), in rank order."""
    if ctx.world_size == 1:
        return [obj]
    out: list = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out
