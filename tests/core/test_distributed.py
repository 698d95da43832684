"""Two gloo processes: the distributed losses equal open_clip's per rank and the
single-process loss on the same global batch."""

import functools
import importlib.util
import json
import socket
import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tests.core.conftest import LOSS_TOL, assert_near, leaves, paired_features
from vecap_cli.core.clip import FusedClipLoss
from vecap_cli.core.dispatch import triton_available
from vecap_cli.core.multipos import (
    FusedMultiPosClipLoss,
    FusedMultiPosSigLipLoss,
    multipos_clip_loss_reference,
    multipos_siglip_loss_reference,
)
from vecap_cli.core.siglip import FusedSigLipLoss

WORLD, B, D, SEED = 2, 13, 32, 7
K = 3  # the multi-positive cases: B images and B·K texts per rank
BACKENDS = ["torch", "triton"] if triton_available() else ["torch"]


@functools.cache
def _open_clip_loss():
    """open_clip/loss.py alone. Importing the package pulls in torchvision, dynamo and
    transformers: over 10 s in each spawned process on a 2-core machine."""
    path = Path(importlib.util.find_spec("open_clip").origin).with_name("loss.py")
    spec = importlib.util.spec_from_file_location("_open_clip_loss", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _cases(rank):
    """name -> (loss module, feature dtype); open_clip's modules are the per-rank oracle."""
    ClipLoss, SigLipLoss = _open_clip_loss().ClipLoss, _open_clip_loss().SigLipLoss
    dist_args = {"rank": rank, "world_size": WORLD}
    cases = {
        "clip_local/open_clip": (
            ClipLoss(local_loss=True, gather_with_grad=True, **dist_args),
            torch.float64,
        ),
        "clip_global/open_clip": (ClipLoss(**dist_args), torch.float64),
        "siglip/open_clip_bidir": (SigLipLoss(dist_impl="bidir", **dist_args), torch.float64),
        "siglip/open_clip_gather": (SigLipLoss(dist_impl="gather", **dist_args), torch.float64),
    }
    for backend in BACKENDS:
        cases[f"clip_local/{backend}"] = (
            FusedClipLoss(local_loss=True, gather_with_grad=True, backend=backend, **dist_args),
            torch.float32,
        )
        cases[f"clip_global/{backend}"] = (
            FusedClipLoss(backend=backend, **dist_args),
            torch.float32,
        )
        cases[f"siglip/{backend}"] = (FusedSigLipLoss(backend=backend, **dist_args), torch.float32)
    return cases


def _multipos_cases(rank):
    dist_args = {"rank": rank, "world_size": WORLD, "positives": K}
    cases = {}
    for backend in BACKENDS:
        cases[f"multipos_clip/{backend}"] = FusedMultiPosClipLoss(backend=backend, **dist_args)
        cases[f"multipos_siglip/{backend}"] = FusedMultiPosSigLipLoss(backend=backend, **dist_args)
    return cases


def _multipos_features():
    """Images (WORLD·B, D) and their K texts each (WORLD·B·K, D), grouped by image."""
    gen = torch.Generator().manual_seed(SEED)
    image = torch.nn.functional.normalize(torch.randn(WORLD * B, D, generator=gen), dim=-1)
    noise = torch.randn(WORLD * B * K, D, generator=gen)
    text = image.repeat_interleave(K, dim=0) + 0.7 * noise
    return image.double(), torch.nn.functional.normalize(text, dim=-1).double()


def _run_case(loss_fn, dtype, image, text):
    image, text = leaves(image, text, dtype=dtype)
    scale, bias = leaves(torch.tensor(50.0, dtype=dtype), torch.tensor(-5.0, dtype=dtype))
    loss = loss_fn(image, text, scale, bias)
    loss.backward()
    return {
        "loss": loss,
        "image": image.grad,
        "text": text.grad,
        "scale": scale.grad,
        "bias": bias.grad,
    }


def _collective_warnings(caught) -> list[str]:
    """Deprecation notices about the collectives among caught warnings."""
    return [
        f"{w.category.__name__}: {w.message}"
        for w in caught
        if issubclass(w.category, DeprecationWarning | FutureWarning)
        and "all_gather" in str(w.message)
    ]


def _worker(rank, port, out_dir):
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD
    )
    try:
        image, text = paired_features(B * WORLD, D, seed=SEED)
        mine = slice(rank * B, (rank + 1) * B)
        results, warned = {}, []
        for name, (fn, dtype) in _cases(rank).items():
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                out = _run_case(fn, dtype, image[mine], text[mine])
            warned += [f"{name}: {w}" for w in _collective_warnings(caught)]
            results[name] = {k: v.detach().double() for k, v in out.items()}
        image, text = _multipos_features()
        texts = slice(rank * B * K, (rank + 1) * B * K)
        for name, fn in _multipos_cases(rank).items():
            out = _run_case(fn, torch.float32, image[mine], text[texts])
            results[name] = {k: v.detach().double() for k, v in out.items()}
        torch.save(results, f"{out_dir}/rank{rank}.pt")
        with open(f"{out_dir}/rank{rank}.warnings.json", "w") as f:
            json.dump(warned, f)
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("gloo")
    mp.start_processes(
        _worker, args=(_free_port(), str(out_dir)), nprocs=WORLD, start_method="spawn"
    )
    return [
        {
            **torch.load(out_dir / f"rank{r}.pt"),
            "warnings": json.loads((out_dir / f"rank{r}.warnings.json").read_text()),
        }
        for r in range(WORLD)
    ]


@pytest.fixture(scope="module")
def single():
    """One process, the whole global batch."""
    image, text = paired_features(B * WORLD, D, seed=SEED)
    losses = _open_clip_loss()
    image_k, text_k = _multipos_features()
    return {
        "clip": _run_case(losses.ClipLoss(), torch.float64, image, text),
        "siglip": _run_case(losses.SigLipLoss(), torch.float64, image, text),
        "multipos_clip": _run_case(
            lambda i, t, s, b: multipos_clip_loss_reference(i, t, s, K) + 0.0 * b,
            torch.float64,
            image_k,
            text_k,
        ),
        "multipos_siglip": _run_case(
            lambda i, t, s, b: multipos_siglip_loss_reference(i, t, s, b, K),
            torch.float64,
            image_k,
            text_k,
        ),
    }


F32 = torch.float32
TOL = LOSS_TOL[F32]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("case", "oracle"),
    [
        ("clip_local", "clip_local/open_clip"),
        ("clip_global", "clip_global/open_clip"),
        ("siglip", "siglip/open_clip_bidir"),
        ("siglip", "siglip/open_clip_gather"),
    ],
)
def test_each_rank_matches_open_clip(ranks, backend, case, oracle):
    for rank in ranks:
        got, want = rank[f"{case}/{backend}"], rank[oracle]
        for key in ("loss", "image", "text", "scale"):
            assert_near(got[key], want[key], TOL, F32, f"{key} vs {oracle}")


def test_our_gathers_raise_no_deprecation_warning(ranks):
    """torch 2.14 deprecates torch.distributed.nn.all_gather: the fused losses do not call it."""
    for rank in ranks:  # open_clip 3.3 itself still calls the old gather
        assert [w for w in rank["warnings"] if "/open_clip" not in w.split(":")[0]] == []


def test_the_warning_check_sees_the_old_gather(ranks):
    """The check above can fail: open_clip 3.3's gather with gradient warns, and is seen."""
    for rank in ranks:
        assert any(w.startswith("clip_local/open_clip: FutureWarning") for w in rank["warnings"])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("case", "loss"),
    [
        ("clip_local", "clip"),
        ("siglip", "siglip"),
        ("multipos_clip", "multipos_clip"),
        ("multipos_siglip", "multipos_siglip"),
    ],
)
def test_ranks_together_equal_one_process(ranks, single, backend, case, loss):
    """What DDP sees: the mean rank loss and averaged gradients are the global batch's."""
    per_rank = [r[f"{case}/{backend}"] for r in ranks]
    want = single[loss]
    assert_near(sum(r["loss"] for r in per_rank) / WORLD, want["loss"], TOL, F32, "loss")
    # each rank's feature gradients already hold every rank's contribution
    # (all_gather's backward sums them), so they are WORLD × the global ones
    for key in ("image", "text"):
        got = torch.cat([r[key] for r in per_rank]) / WORLD
        assert_near(got, want[key], TOL, F32, key)
    for key in ("scale", "bias") if loss.endswith("siglip") else ("scale",):
        assert_near(sum(r[key] for r in per_rank) / WORLD, want[key], TOL, F32, key)
