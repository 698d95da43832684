"""Process groups and devices: torchrun (DDP) and Slurm's srun, gloo on CPU, NCCL on GPU.

`RunOptions` brings rank and world size already resolved (flags, else
torchrun's RANK/WORLD_SIZE, else Slurm's SLURM_PROCID/SLURM_NTASKS); the
rendezvous address comes from MASTER_ADDR/MASTER_PORT as torchrun sets them,
else, under srun, from the step's first node (where task 0 runs).
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass, field
from datetime import timedelta

import torch
import torch.distributed as dist

from vecap_cli.errors import VecapError


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        return self.rank == 0


def pick_device(preference: str, world_size: int) -> torch.device:
    if preference == "cpu" or (preference == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise VecapError("--device cuda: no CUDA device is visible")
    local = int(os.environ.get("LOCAL_RANK", os.environ.get("SLURM_LOCALID", "0")))
    index = local % torch.cuda.device_count() if world_size > 1 else 0
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def first_host(nodelist: str) -> str:
    """The first host of a Slurm node list: 'gpu[003-005,9],cpu1' -> 'gpu003'."""
    match = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist)
    if match is None:
        return nodelist
    prefix, ranges = match.groups()
    return prefix + (ranges.split(",")[0].split("-")[0] if ranges else "")


def rendezvous(env) -> dict[str, str]:
    """MASTER_ADDR/MASTER_PORT when torchrun did not set them: under srun, task 0's
    node (the first of the step) and a port from the job id; else this host."""
    nodes = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST")
    job = env.get("SLURM_JOB_ID", "")
    return {
        "MASTER_ADDR": first_host(nodes) if nodes else "127.0.0.1",
        "MASTER_PORT": str(20000 + int(job) % 20000) if job.isdigit() else "29500",
    }


def setup(rank: int, world_size: int, preference: str = "auto") -> Dist:
    device = pick_device(preference, world_size)
    # open_clip's and the core's differentiable gather: a deprecation notice, once per rank
    warnings.filterwarnings("ignore", "torch.distributed.nn.functional.all_gather is deprecated")
    if world_size > 1 and not dist.is_initialized():
        for name, value in rendezvous(os.environ).items():
            os.environ.setdefault(name, value)
        backend = "nccl" if device.type == "cuda" else "gloo"
        try:
            dist.init_process_group(
                backend,
                init_method="env://",
                rank=rank,
                world_size=world_size,
                timeout=timedelta(minutes=30),
            )
        except (RuntimeError, ValueError) as err:
            raise VecapError(f"cannot join the process group ({backend}): {err}") from None
    return Dist(rank, world_size, device)


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


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


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
