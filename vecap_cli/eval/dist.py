"""Data-parallel evaluation: every rank embeds its share, rank 0 scores the whole.

Under torchrun or srun the ranks meet in a process group as train's do (NCCL on
GPUs, gloo on CPUs; see `vecap_cli.process_group`); with one rank nothing is
started and `all_gather` returns its input.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from vecap_cli.placement import Placement
from vecap_cli.process_group import join, leave


class Group:
    def __init__(self, rank: int = 0, world_size: int = 1):
        self.rank, self.world_size = rank, world_size
        self._started = False

    @classmethod
    def start(cls, placement: Placement, device: torch.device, log=lambda line: None) -> Group:
        group = cls(placement.rank, placement.world_size)
        group._started = join(placement, device, log)
        return group

    @property
    def main(self) -> bool:
        return self.rank == 0

    def all_gather(self, value):
        """[value of rank 0, value of rank 1, ...] on every rank (any picklable value)."""
        if self.world_size == 1:
            return [value]
        out = [None] * self.world_size
        dist.all_gather_object(out, value)
        return out

    def cat(self, tensor: torch.Tensor) -> torch.Tensor:
        """Every rank's rows, in rank order, on every rank."""
        parts = self.all_gather(tensor.cpu())
        return torch.cat([p for p in parts if p.numel()] or [tensor])

    def close(self) -> None:
        if self._started:
            leave()
            self._started = False
