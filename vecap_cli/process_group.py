"""A rank's device and its process group, as train and eval both take them.

From a resolved `Placement` (see placement.py): the device ('auto', 'cpu',
'cuda', 'cuda:N'; 'cuda' is the rank's local GPU) and the group of all ranks,
gloo on CPU, NCCL on GPU, met at the placement's rendezvous.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist

from vecap_cli.errors import VecapError
from vecap_cli.placement import Placement, device_name

# Long enough for rank 0 to save a checkpoint or score a whole eval while the
# others wait in a collective.
TIMEOUT = timedelta(minutes=30)


def pick_device(preference: str | None, placement: Placement) -> torch.device:
    """The device this rank computes on, made current when it is a GPU."""
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    name = device_name(preference, placement, gpus)
    try:
        device = torch.device(name)
    except RuntimeError:
        raise VecapError(f"--device '{name}': not a torch device") from None
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


def join(placement: Placement, device: torch.device, log=lambda line: None) -> bool:
    """Joins the ranks' process group; False when there is none to join (one rank)
    or this process is in one already. A failed rendezvous is one line. The wait
    for the other ranks (up to TIMEOUT) is said on `log` first, so that a
    --world-size no launcher started is not a silent hang."""
    if placement.world_size == 1 or dist.is_initialized():
        return False
    log(
        f"rank {placement.rank}: waiting for {placement.world_size} ranks at "
        f"{placement.master_addr}:{placement.master_port} (up to {TIMEOUT})"
    )
    # torch's env:// rendezvous reads these, and torchrun's workers must name the
    # agent's store exactly as torchrun set them: torchrun's values come back as
    # they were, srun's are filled in.
    os.environ.update(MASTER_ADDR=placement.master_addr, MASTER_PORT=placement.master_port)
    backend = "nccl" if device.type == "cuda" else "gloo"
    try:
        dist.init_process_group(
            backend,
            init_method="env://",
            rank=placement.rank,
            world_size=placement.world_size,
            timeout=TIMEOUT,
        )
    except (RuntimeError, ValueError) as err:
        why = (str(err).strip() or type(err).__name__).splitlines()[0]
        raise VecapError(f"cannot join the process group ({backend}): {why}") from None
    return True


def leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
