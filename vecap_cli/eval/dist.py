"""Data-parallel evaluation: every rank embeds its share, rank 0 scores the whole.

Under torchrun (or Slurm with MASTER_ADDR/MASTER_PORT set) the ranks meet in a
process group (NCCL on GPUs, gloo on CPUs); with one rank nothing is started
and `gather` returns its input.
"""

from __future__ import annotations

import os

import torch

from vecap_cli.errors import VecapError


class Group:
    def __init__(self, rank: int = 0, world_size: int = 1):
        self.rank, self.world_size = rank, world_size
        self._started = False

    @classmethod
    def start(cls, rank: int, world_size: int, device: torch.device) -> Group:
        group = cls(rank, world_size)
        if world_size == 1:
            return group
        import torch.distributed as dist

        if not (os.environ.get("MASTER_ADDR") and os.environ.get("MASTER_PORT")):
            raise VecapError(
                f"--world-size {world_size} needs the ranks to meet: run under torchrun, "
                "or set MASTER_ADDR and MASTER_PORT"
            )
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, init_method="env://", rank=rank, world_size=world_size)
        group._started = True
        return group

    @property
    def main(self) -> bool:
        return self.rank == 0

    def all_gather(self, value):
        """[value of rank 0, value of rank 1, ...] on every rank (any picklable value)."""
        if self.world_size == 1:
            return [value]
        import torch.distributed as dist

        out = [None] * self.world_size
        dist.all_gather_object(out, value)
        return out

    def cat(self, tensor: torch.Tensor) -> torch.Tensor:
        """Every rank's rows, in rank order, on every rank."""
        parts = self.all_gather(tensor.cpu())
        return torch.cat([p for p in parts if p.numel()] or [tensor])

    def close(self) -> None:
        if self._started:
            import torch.distributed as dist

            dist.destroy_process_group()
            self._started = False
