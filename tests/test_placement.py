"""Where a process runs among the ranks: flags, else torchrun's variables, else Slurm's."""

import pytest

from vecap_cli.errors import VecapError
from vecap_cli.placement import Placement, device_name, resolve

TORCHRUN = {
    "RANK": "5",
    "WORLD_SIZE": "8",
    "LOCAL_RANK": "1",
    "MASTER_ADDR": "node0",
    "MASTER_PORT": "29400",
}
SRUN = {
    "SLURM_PROCID": "6",
    "SLURM_NTASKS": "8",
    "SLURM_LOCALID": "2",
    "SLURM_STEP_NODELIST": "gpu[007-008]",
    "SLURM_JOB_ID": "4242",
}


def test_alone_without_a_launcher():
    assert resolve(None, None, {}) == Placement(0, 1, 0, "127.0.0.1", "29500")


def test_from_the_flags():
    assert resolve(1, 3, {}) == Placement(rank=1, world_size=3)


def test_from_torchrun():
    assert resolve(None, None, TORCHRUN) == Placement(5, 8, 1, "node0", "29400")


def test_from_srun_the_ranks_meet_on_the_first_node_of_the_step():
    port = str(20000 + 4242 % 20000)
    assert resolve(None, None, SRUN) == Placement(6, 8, 2, "gpu007", port)


def test_flags_win_over_both_and_torchrun_over_slurm():
    both = {**SRUN, **TORCHRUN}
    assert resolve(None, None, both) == resolve(None, None, TORCHRUN)
    flagged = resolve(0, 2, both)
    assert (flagged.rank, flagged.world_size) == (0, 2)
    assert (flagged.local_rank, flagged.master_addr) == (1, "node0")  # no flags for these


def test_a_rank_beyond_the_world_is_refused():
    with pytest.raises(ValueError, match="rank 2 is not below world size 2"):
        resolve(2, 2, {})
    with pytest.raises(ValueError, match="rank 5 is not below world size 4"):
        resolve(None, 4, TORCHRUN)


def test_cuda_is_the_local_gpu_under_torchrun_and_srun():
    assert device_name("cuda", resolve(None, None, TORCHRUN), gpus=4) == "cuda:1"
    assert device_name("cuda", resolve(None, None, SRUN), gpus=4) == "cuda:2"
    assert device_name(None, resolve(None, None, SRUN), gpus=4) == "cuda:2"  # eval's default
    assert device_name("auto", resolve(None, None, SRUN), gpus=2) == "cuda:0"  # round-robin


def test_one_rank_takes_the_first_gpu_and_explicit_devices_stand():
    alone = Placement(local_rank=3)
    assert device_name("cuda", alone, gpus=4) == "cuda:0"
    assert device_name("cuda:2", Placement(5, 8, 1), gpus=4) == "cuda:2"
    assert device_name("auto", Placement(5, 8, 1), gpus=0) == "cpu"
    assert device_name("cpu", Placement(5, 8, 1), gpus=4) == "cpu"


def test_cuda_without_a_gpu_is_one_line():
    with pytest.raises(VecapError, match=r"^--device cuda: no CUDA device is visible$"):
        device_name("cuda", Placement(), gpus=0)
