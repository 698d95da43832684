"""Where this process runs among the ranks of a job, read once at the CLI edge.

A job is launched as one process (a rank) of many by torchrun, which sets
RANK, WORLD_SIZE, LOCAL_RANK and MASTER_ADDR/MASTER_PORT, or by Slurm's srun,
which sets SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID and the node list. The
flags --rank/--world-size win over both; torchrun's variables over Slurm's.
`resolve` reads them into a `Placement` that the library below is handed: no
module under it reads the environment for these again.

No torch here: every command, `vecap mix` included, resolves its placement.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from vecap_cli.errors import VecapError


@dataclass(frozen=True)
class Placement:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0  # among the ranks on this node: which of its GPUs this rank takes
    master_addr: str = "127.0.0.1"  # where the ranks meet: rank 0's host
    master_port: str = "29500"


def resolve(rank: int | None, world_size: int | None, env: Mapping[str, str]) -> Placement:
    """The flags (None: not given), else torchrun's variables in `env`, else Slurm's,
    else one process. ValueError when the rank is not below the world size."""

    def pick(flag: int | None, *names: str) -> int | None:
        if flag is not None:
            return flag
        return next((int(env[n]) for n in names if env.get(n, "").isdigit()), None)

    rank = pick(rank, "RANK", "SLURM_PROCID") or 0
    world_size = pick(world_size, "WORLD_SIZE", "SLURM_NTASKS") or 1
    if rank >= world_size:
        raise ValueError(f"rank {rank} is not below world size {world_size}")
    local_rank = pick(None, "LOCAL_RANK", "SLURM_LOCALID") or 0
    meet = rendezvous(env)
    return Placement(rank, world_size, local_rank, meet["MASTER_ADDR"], meet["MASTER_PORT"])


def rendezvous(env: Mapping[str, str]) -> dict[str, str]:
    """MASTER_ADDR/MASTER_PORT as torchrun sets them; where it did not, under srun
    task 0's node (the first of the step) and a port from the job id, else this host."""
    nodes = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST")
    job = env.get("SLURM_JOB_ID", "")
    return {
        "MASTER_ADDR": env.get("MASTER_ADDR") or (first_host(nodes) if nodes else "127.0.0.1"),
        "MASTER_PORT": env.get("MASTER_PORT")
        or (str(20000 + int(job) % 20000) if job.isdigit() else "29500"),
    }


def first_host(nodelist: str) -> str:
    """The first host of a Slurm node list: 'gpu[003-005,9],cpu1' -> 'gpu003'."""
    match = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist)
    if match is None:
        return nodelist
    prefix, ranges = match.groups()
    return prefix + (ranges.split(",")[0].split("-")[0] if ranges else "")


def device_name(preference: str | None, placement: Placement, gpus: int) -> str:
    """The torch device this rank runs on, given `gpus` visible CUDA devices.

    'auto' (or None): cuda when there is one, else cpu. 'cuda': this rank's GPU on
    its node, its local rank (ranks share GPUs round-robin when there are more of
    them); one rank alone takes the first. Anything else ('cuda:1', 'cpu') as given.
    """
    if preference in (None, "auto"):
        preference = "cuda" if gpus else "cpu"
    if preference.startswith("cuda") and not gpus:
        raise VecapError(f"--device {preference}: no CUDA device is visible")
    if preference != "cuda":
        return preference
    index = placement.local_rank % gpus if placement.world_size > 1 else 0
    return f"cuda:{index}"
