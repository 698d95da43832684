"""Eval's ranks meet under srun as train's do: from Slurm's variables alone, no MASTER_ADDR."""

import os
import random
import socket
import subprocess
import sys

from tests.conftest import REPO

RANK = """
import os, torch
from vecap_cli.eval.dist import Group
from vecap_cli.placement import resolve
group = Group.start(resolve(None, None, os.environ), torch.device("cpu"))
print(group.all_gather(group.rank))
group.close()
"""
LAUNCHERS = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK")


def _job_id() -> int:
    """A Slurm job id whose rendezvous port, 20000 + id % 20000, is free here."""
    for job in random.sample(range(20000), 100):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", 20000 + job))
            except OSError:
                continue
            return job
    raise RuntimeError("no free port in 20000..39999")


def test_two_srun_tasks_meet_on_the_first_node_of_the_step():
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHERS}
    env.update(
        PYTHONPATH=str(REPO),
        OMP_NUM_THREADS="1",
        SLURM_NTASKS="2",
        SLURM_STEP_NODELIST="localhost",
        SLURM_JOB_ID=str(_job_id()),
    )
    tasks = [
        subprocess.Popen(
            [sys.executable, "-c", RANK],
            env={**env, "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]
    outputs = [task.communicate(timeout=300) for task in tasks]
    for task, (out, err) in zip(tasks, outputs, strict=True):
        assert task.returncode == 0, err
        assert out.strip() == "[0, 1]"
