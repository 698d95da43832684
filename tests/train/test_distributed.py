"""Two gloo ranks with half a batch each take the same step as one process with all of it."""

import os
import socket
import warnings

import pytest
import torch

pytest.importorskip("open_clip")

# (loss, model, captions per image: --positives)
CASES = [
    ("clip", "vecap-tiny", 1),
    ("siglip", "vecap-tiny-sigmoid", 1),
    ("clip", "vecap-tiny", 2),
    ("siglip", "vecap-tiny-sigmoid", 3),
]
BATCH = 12  # global


def _name(kind: str, k: int) -> str:
    return kind if k == 1 else f"{kind}-positives{k}"


def _batch(arch: str, k: int = 1):
    from vecap_cli.train.models import build

    gen = torch.Generator().manual_seed(7)
    images = torch.randn(BATCH, 3, 32, 32, generator=gen)
    words = ["red", "blue", "green", "cube", "ball", "dog", "cat", "on", "a", "table"]
    captions = [
        " ".join(words[int(i)] for i in torch.randint(0, 10, (5,), generator=gen))
        for _ in range(BATCH * k)
    ]
    return images, build(arch).tokenizer(captions)  # texts (BATCH·K, ctx), grouped by image


def _one_step(kind: str, arch: str, rank: int, world: int, k: int = 1) -> dict:
    from torch.nn.parallel import DistributedDataParallel

    from vecap_cli.train.config import TrainConfig
    from vecap_cli.train.loop import make_optimizer, train_step
    from vecap_cli.train.losses import make_loss
    from vecap_cli.train.models import build

    model = build(arch, seed=3).model
    cfg = TrainConfig(inputs=("-",), output="-", lr=1e-3)
    optimizer = make_optimizer(model, cfg)
    images, texts = _batch(arch, k)
    lo, hi = rank * BATCH // world, (rank + 1) * BATCH // world
    wrapped = DistributedDataParallel(model) if world > 1 else model
    loss = make_loss(kind, rank=rank, world_size=world, positives=k)
    metrics = train_step(wrapped, loss, optimizer, images[lo:hi], texts[lo * k : hi * k], raw=model)
    return {
        "loss": metrics["loss"],
        "grads": {n: p.grad.clone() for n, p in model.named_parameters()},
        "weights": {n: p.detach().clone() for n, p in model.state_dict().items()},
    }


def _rank(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        for kind, arch, k in CASES:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                result = _one_step(kind, arch, rank, world, k)
            result["warnings"] = [
                f"{w.category.__name__}: {w.message}"
                for w in caught
                if issubclass(w.category, DeprecationWarning | FutureWarning)
                and "all_gather" in str(w.message)
            ]
            losses = [None] * world
            dist.all_gather_object(losses, result["loss"])
            result["loss"] = sum(losses) / world
            if rank == 0:
                torch.save(result, os.path.join(out, f"{_name(kind, k)}.pt"))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    torch.multiprocessing.spawn(_rank, args=(2, _free_port(), str(out)), nprocs=2, join=True)
    return out


@pytest.mark.parametrize(("kind", "arch", "k"), CASES)
def test_two_gloo_ranks_equal_one_process_on_the_global_batch(two_ranks, kind, arch, k):
    """K > 1 too: each rank's images against all ranks' B·K texts and back."""
    ddp = torch.load(two_ranks / f"{_name(kind, k)}.pt", weights_only=True)
    one = _one_step(kind, arch, 0, 1, k)
    assert ddp["loss"] == pytest.approx(one["loss"], rel=1e-5)
    for name, grad in one["grads"].items():  # fp32 sums in another order: relative to the largest
        atol = 1e-5 * grad.abs().max().item()
        torch.testing.assert_close(ddp["grads"][name], grad, rtol=1e-4, atol=atol, msg=name)
    # Adam's first step is ±lr where |grad| >> eps; near-zero grads make the last few percent
    for name, weight in one["weights"].items():
        torch.testing.assert_close(ddp["weights"][name], weight, rtol=0, atol=5e-5, msg=name)
    moved = one["weights"]["logit_scale"] != _one_step_start(arch)["logit_scale"]
    assert moved  # the step did something


@pytest.mark.parametrize(("kind", "arch", "k"), CASES)
def test_the_ddp_step_raises_no_deprecated_gather_warning(two_ranks, kind, arch, k):
    """torch 2.14 deprecates torch.distributed.nn.all_gather; the fused losses do not use it."""
    path = two_ranks / f"{_name(kind, k)}.pt"
    assert torch.load(path, weights_only=True)["warnings"] == []


def _one_step_start(arch: str) -> dict:
    from vecap_cli.train.models import build

    return build(arch, seed=3).model.state_dict()


def test_srun_ranks_meet_on_the_first_node_of_the_step():
    from vecap_cli.placement import first_host, rendezvous

    assert first_host("gpu[003-005,9],cpu1") == "gpu003"
    assert first_host("node7") == "node7"
    env = {"SLURM_STEP_NODELIST": "a[10-11]", "SLURM_JOB_ID": "123456"}
    assert rendezvous(env) == {"MASTER_ADDR": "a10", "MASTER_PORT": str(20000 + 123456 % 20000)}
    assert rendezvous({}) == {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
