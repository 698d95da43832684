"""The distillation loss: values and student gradients against the dense fp64 reference,
the reference against the formula and open_clip's DistillClipLoss, the local form
against the global one (in one process and on two gloo ranks), and memory."""

import pytest
import torch
import torch.multiprocessing as mp
from open_clip.loss import DistillClipLoss

from tests.core import gloo_distill
from tests.core.conftest import BACKENDS, LOSS_TOL, assert_near, leaves
from tests.core.gloo_distill import DT, WORLD, B, D, features, free_port
from tests.core.test_clip import _LargestTensor
from vecap_cli.core import distill, tiles
from vecap_cli.core.dispatch import triton_available
from vecap_cli.core.distill import (
    FusedDistillClipLoss,
    distill_loss,
    distill_loss_local,
    distill_loss_reference,
)


@pytest.fixture(autouse=True)
def _small_torch_tiles(monkeypatch):
    """Chunks of a few rows, so the torch path crosses chunk edges at test sizes."""
    monkeypatch.setattr(tiles, "TILE_ELEMENTS", 512)


_features = features


def _check(backend, b, d, dt, dtype, scale=10.0, t_scale=20.0, seed=0):
    image, text, t_image, t_text = _features(b, d, dt, seed)
    ours = leaves(image, text, dtype=dtype)
    s = torch.tensor(scale, requires_grad=True)
    loss = distill_loss(*ours, s, t_image.to(dtype), t_text.to(dtype), t_scale, backend=backend)
    loss.backward()

    ref = leaves(image.to(dtype), text.to(dtype), s, dtype=torch.float64)
    want = distill_loss_reference(
        *ref, t_image.to(dtype).double(), t_text.to(dtype).double(), t_scale
    )
    want.backward()

    tol = LOSS_TOL[dtype]
    assert loss.dtype == torch.float32 and ours[0].grad.dtype == dtype
    assert_near(loss, want, tol, dtype, "loss")
    assert_near(ours[0].grad, ref[0].grad, tol, dtype, "image grad")
    assert_near(ours[1].grad, ref[1].grad, tol, dtype, "text grad")
    assert_near(s.grad, ref[2].grad, tol, dtype, "scale grad")


# -- the reference against the formula and MobileCLIP's / open_clip's loss ------------------


def test_reference_is_the_documented_formula():
    """½ (mean over images of KL over texts + mean over texts of KL over images), as loops."""
    image, text, t_image, t_text = _features(4, 8, 6, seed=1)
    s, t = 7.0 * image @ text.T, 20.0 * t_image @ t_text.T

    def kl(p_logits, q_logits):
        p, log_p, log_q = p_logits.softmax(0), p_logits.log_softmax(0), q_logits.log_softmax(0)
        return (p * (log_p - log_q)).sum()

    rows = sum(kl(t[i], s[i]) for i in range(4)) / 4
    cols = sum(kl(t[:, j], s[:, j]) for j in range(4)) / 4
    got = distill_loss_reference(image, text, 7.0, t_image, t_text, 20.0)
    assert torch.allclose(got, (rows + cols) / 2)
    assert got > 0


def test_gradients_are_open_clips_distill_loss():
    """open_clip's DistillClipLoss (which MobileCLIP patches) uses the cross-entropy
    −Σ p_t log p_s: the KL less the teacher's entropy, so the same student gradients."""
    image, text, t_image, t_text = leaves(*_features(9, 16, 12, seed=2))
    s = torch.tensor(10.0, dtype=torch.float64, requires_grad=True)
    _, theirs = DistillClipLoss()(image, text, s, t_image, t_text, 20.0)
    want = torch.autograd.grad(theirs, (image, text, s))
    got = torch.autograd.grad(distill_loss(image, text, s, t_image, t_text, 20.0), (image, text, s))
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g.double(), w, rtol=1e-5, atol=1e-7)


def test_a_student_equal_to_its_teacher_has_zero_loss_and_gradient():
    image, text, _, _ = _features(11, 16, 16)
    image, text = leaves(image, text, dtype=torch.float32)
    s = torch.tensor(20.0, requires_grad=True)
    loss = distill_loss(image, text, s, image.detach(), text.detach(), 20.0)
    loss.backward()
    assert abs(loss.item()) < 1e-5
    assert image.grad.abs().max() < 1e-5 and abs(s.grad.item()) < 1e-5


# -- the tiled paths against the reference ---------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("b", "d", "dt"), [(1, 16, 8), (37, 33, 20), (40, 64, 96)])
def test_fp32(backend, b, d, dt):
    _check(backend, b, d, dt, torch.float32)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bf16(backend):
    _check(backend, 37, 64, 48, torch.bfloat16)


@pytest.mark.parametrize("backend", BACKENDS)
def test_sharp_scales(backend):
    """MobileCLIP's teacher scale 100 and a trained student's: near one-hot rows."""
    _check(backend, 29, 32, 24, torch.float32, scale=100.0, t_scale=100.0, seed=3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_teacher_gets_no_gradient(backend):
    image, text, t_image, t_text = leaves(*_features(13, 16, 8), dtype=torch.float32)
    distill_loss(image, text, 10.0, t_image, t_text, backend=backend).backward()
    assert t_image.grad is None and t_text.grad is None
    assert image.grad is not None


# -- the local form ----------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_local_form_over_ranks_is_the_global_loss(backend):
    """Each "rank"'s rows against all columns: the mean over ranks is the global loss,
    and the gradients summed over ranks are world × the global ones (what the gather's
    backward sums)."""
    world, b = 3, 7
    image, text, t_image, t_text = leaves(*_features(world * b, 16, 12), dtype=torch.float32)
    s = torch.tensor(10.0, requires_grad=True)
    total = 0
    for rank in range(world):
        mine = slice(rank * b, (rank + 1) * b)
        total = total + distill_loss_local(
            image[mine], text[mine], image, text, s,
            t_image[mine], t_text[mine], t_image, t_text, 20.0, backend=backend,
        )  # fmt: skip
    total = total / world
    total.backward()
    ref = leaves(image, text, s, dtype=torch.float64)
    want = distill_loss_reference(*ref, t_image.double(), t_text.double(), 20.0)
    want.backward()
    f32 = torch.float32
    assert_near(total, want, LOSS_TOL[f32], f32, "loss")
    # rows and the gathered columns are the same leaves here: their gradients add up
    assert_near(image.grad, ref[0].grad, LOSS_TOL[f32], f32, "image grad")
    assert_near(s.grad, ref[2].grad, LOSS_TOL[f32], f32, "scale grad")


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """Both backends on two gloo ranks, in one spawn: a spawn costs seconds."""
    out_dir = tmp_path_factory.mktemp("gloo")
    backends = [getattr(b, "values", [b])[0] for b in BACKENDS]
    mp.start_processes(
        gloo_distill.worker, args=(free_port(), str(out_dir), backends),
        nprocs=WORLD, start_method="spawn",
    )  # fmt: skip
    return [torch.load(out_dir / f"rank{r}.pt") for r in range(WORLD)]


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_gloo_ranks_equal_one_process(ranks, backend):
    per_rank = [r[backend] for r in ranks]
    ref = leaves(*_features(WORLD * B, D, DT, seed=5)[:2], torch.tensor(10.0, dtype=torch.float64))
    feats = _features(WORLD * B, D, DT, seed=5)
    want = distill_loss_reference(*ref, feats[2], feats[3], 20.0)
    want.backward()
    f32, tol = torch.float32, LOSS_TOL[torch.float32]
    assert_near(sum(r["loss"] for r in per_rank) / WORLD, want, tol, f32, "loss")
    for key, leaf in (("image", ref[0]), ("text", ref[1])):
        got = torch.cat([r[key] for r in per_rank]) / WORLD  # each rank holds all contributions
        assert_near(got, leaf.grad, tol, f32, key)
    assert_near(sum(r["scale"] for r in per_rank) / WORLD, ref[2].grad, tol, f32, "scale")


# -- memory and arguments ------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_batch_by_batch_tensor(backend):
    """Forward and backward never create a tensor as large as the B×B logits."""
    b = 96  # the interpreter copies a tensor as bytes: (96, 16) fp32 is 6144 < 96²
    image, text, t_image, t_text = _features(b, 16, 12)
    image, text = leaves(image, text, dtype=torch.float32)
    s = torch.tensor(20.0, requires_grad=True)
    with _LargestTensor() as mode:
        distill_loss(image, text, s, t_image.float(), t_text.float(), backend=backend).backward()
    assert 0 < mode.largest < b * b


def test_bad_shapes_are_refused():
    x, t = torch.randn(4, 8), torch.randn(4, 6)
    with pytest.raises(ValueError, match="teacher rows"):
        distill_loss(x, x, 1.0, torch.randn(5, 6), t)
    with pytest.raises(ValueError, match="equal D"):
        distill_loss(x, x, 1.0, t, torch.randn(4, 7))
    with pytest.raises(ValueError, match="as many images"):
        distill_loss(x, torch.randn(5, 8), 1.0, t, torch.randn(5, 6))


def test_module_returns_both_terms():
    image, text, t_image, t_text = _features(9, 8, 6)
    s = torch.tensor(10.0, dtype=torch.float64)
    out = FusedDistillClipLoss()(image, text, s, t_image, t_text, 20.0, output_dict=True)
    theirs = DistillClipLoss()(image, text, s, t_image, t_text, 20.0, output_dict=True)
    assert set(out) == set(theirs)
    assert torch.allclose(out["contrastive_loss"].double(), theirs["contrastive_loss"])
    assert torch.allclose(
        out["distill_loss"].double(), distill_loss_reference(image, text, s, t_image, t_text, 20.0)
    )


# -- dispatch on CUDA tensors, without a GPU (FakeTensorMode, as test_dispatch does) -------


@pytest.mark.skipif(not triton_available(), reason="triton is not installed")
def test_cuda_tensors_run_the_triton_kernels(fake_cuda):
    assert distill._kernels(fake_cuda(4, 8), None).__name__ == "vecap_cli.core.distill_triton"
    assert distill._kernels(fake_cuda(4, 8), "torch") is distill.TorchKernels


def test_torch_path_runs_on_cuda_tensors(fake_cuda):
    """Forced to torch, the loss keeps CUDA tensors on CUDA: no hidden CPU tensor."""
    image, text = fake_cuda(6, 8, dtype=torch.bfloat16), fake_cuda(6, 8, dtype=torch.bfloat16)
    t_image, t_text = fake_cuda(6, 5, dtype=torch.float16), fake_cuda(6, 5, dtype=torch.float16)
    loss = distill_loss(image, text, 10.0, t_image, t_text, backend="torch")
    assert loss.device.type == "cuda" and loss.dtype == torch.float32


def test_the_benchmark_steps_run(monkeypatch):
    """bench_distill / make gpu-check's rows, tiny: both impls step."""
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_kernels.py"
    spec = importlib.util.spec_from_file_location("bench_kernels_for_test", path)
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, bench)  # its dataclasses look it up
    spec.loader.exec_module(bench)
    for impl in ("dense", "vecap"):
        bench._distill_step(bench.Case("distill", impl, "cpu", "float32", (8, 16, 12)), torch)()
