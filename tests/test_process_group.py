"""The device and process group train and eval share, without a GPU: torch.cuda faked."""

import pytest
import torch

from vecap_cli.errors import VecapError
from vecap_cli.placement import Placement
from vecap_cli.process_group import join, pick_device


@pytest.fixture
def four_gpus(monkeypatch):
    current = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "set_device", current.append)
    return current


def test_cuda_is_this_ranks_gpu_on_its_node_and_made_current(four_gpus):
    srun_task = Placement(rank=6, world_size=8, local_rank=2)
    assert pick_device("cuda", srun_task) == torch.device("cuda", 2)
    assert pick_device(None, srun_task) == torch.device("cuda", 2)  # eval's default
    assert four_gpus == [torch.device("cuda", 2)] * 2


def test_cpu_leaves_the_gpus_alone(four_gpus):
    assert pick_device("cpu", Placement(rank=1, world_size=2, local_rank=1)).type == "cpu"
    assert four_gpus == []


def test_a_device_torch_does_not_know_is_one_line():
    with pytest.raises(VecapError, match=r"^--device 'gpu0': not a torch device$"):
        pick_device("gpu0", Placement())


def test_one_rank_joins_no_group():
    assert join(Placement(), torch.device("cpu")) is False
    assert not torch.distributed.is_initialized()


def test_the_wait_for_the_other_ranks_is_said_and_a_failed_one_is_one_line(monkeypatch):
    def refused(*args, **kwargs):
        raise RuntimeError("connection refused\nat some C++ frame")

    monkeypatch.setattr(torch.distributed, "init_process_group", refused)
    said = []
    where = Placement(rank=1, world_size=2, master_addr="10.0.0.7", master_port="29511")
    with pytest.raises(VecapError) as err:
        join(where, torch.device("cpu"), said.append)
    assert said == ["rank 1: waiting for 2 ranks at 10.0.0.7:29511 (up to 0:30:00)"]
    assert str(err.value) == "cannot join the process group (gloo): connection refused"
