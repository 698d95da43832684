"""Multi-positive losses: values and every gradient against the dense fp64 references,
the references against the formulas written out, and K = 1 against CLIP / SigLIP."""

import pytest
import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss

from tests.core.conftest import BACKENDS, LOSS_TOL, assert_near, leaves
from tests.core.test_clip import _LargestTensor
from vecap_cli.core import multipos, tiles
from vecap_cli.core.clip import clip_loss
from vecap_cli.core.dispatch import triton_available
from vecap_cli.core.multipos import (
    multipos_clip_loss,
    multipos_clip_loss_local,
    multipos_clip_loss_reference,
    multipos_siglip_loss,
    multipos_siglip_loss_reference,
)
from vecap_cli.core.siglip import siglip_loss, siglip_loss_reference


@pytest.fixture(autouse=True)
def _small_torch_tiles(monkeypatch):
    """Chunks of a few rows, so the torch path crosses chunk edges at test sizes."""
    monkeypatch.setattr(tiles, "TILE_ELEMENTS", 512)


def _features(b: int, k: int, d: int, seed: int = 0):
    """Unit images (B, D) and texts (B·K, D), text j a noisy copy of image j // K."""
    gen = torch.Generator().manual_seed(seed)
    image = F.normalize(torch.randn(b, d, generator=gen, dtype=torch.float64), dim=-1)
    noise = torch.randn(b * k, d, generator=gen, dtype=torch.float64)
    text = F.normalize(image.repeat_interleave(k, dim=0) + 0.7 * noise, dim=-1)
    return image, text


def _check(loss_fn, ref_fn, b, k, d, dtype, scale=100.0, bias=None, seed=0):
    image, text = leaves(*_features(b, k, d, seed), dtype=dtype)
    s, bias_t = leaves(torch.tensor(scale), torch.tensor(-5.0 if bias is None else bias))
    loss = loss_fn(image, text, s, bias_t, k)
    loss.backward()

    r_image, r_text, r_s, r_bias = leaves(image, text, s, bias_t, dtype=torch.float64)
    ref = ref_fn(r_image, r_text, r_s, r_bias, k)
    ref.backward()

    tol = LOSS_TOL[dtype]
    assert loss.dtype == torch.float32
    assert image.grad.dtype == dtype and text.grad.dtype == dtype
    assert_near(loss, ref, tol, dtype, "loss")
    assert_near(image.grad, r_image.grad, tol, dtype, "image grad")
    assert_near(text.grad, r_text.grad, tol, dtype, "text grad")
    assert_near(s.grad, r_s.grad, tol, dtype, "scale grad")
    return bias_t, r_bias


def _softmax(backend):
    def run(image, text, s, bias, k):
        return multipos_clip_loss(image, text, s, bias, positives=k, backend=backend)

    return run


def _softmax_ref(image, text, s, bias, k):
    return multipos_clip_loss_reference(image, text, s, k) + 0.0 * bias


def _sigmoid(backend):
    def run(image, text, s, bias, k):
        return multipos_siglip_loss(image, text, s, bias, positives=k, backend=backend)

    return run


# -- references against the formulas -----------------------------------------------------


def test_softmax_reference_is_the_documented_formula():
    """Mean over each image's K positives of log-softmax over all texts, and each text's
    CE over the images: written as loops, independently of the reference's masks."""
    b, k = 3, 2
    image, text = _features(b, k, 8, seed=1)
    logits = 7.0 * image @ text.T  # (B, BK)
    i2t = -sum(
        torch.log_softmax(logits[i], 0)[j] / k for i in range(b) for j in range(i * k, i * k + k)
    )
    t2i = -sum(torch.log_softmax(logits[:, j], 0)[j // k] for j in range(b * k))
    want = (i2t / b + t2i / (b * k)) / 2
    assert torch.allclose(multipos_clip_loss_reference(image, text, 7.0, k), want)


def test_sigmoid_reference_is_the_documented_formula():
    b, k = 3, 2
    image, text = _features(b, k, 8, seed=1)
    logits = 7.0 * image @ text.T - 2.0
    want = -sum(
        F.logsigmoid((1.0 if j // k == i else -1.0) * logits[i, j])
        for i in range(b)
        for j in range(b * k)
    )
    got = multipos_siglip_loss_reference(image, text, 7.0, -2.0, k)
    assert torch.allclose(got, want / b)


def test_references_at_one_positive_are_clip_and_siglip():
    image, text = _features(11, 1, 16)
    s = torch.tensor(30.0, dtype=torch.float64)
    assert torch.allclose(
        multipos_clip_loss_reference(image, text, s, 1), ClipLoss()(image, text, s)
    )
    assert torch.allclose(
        multipos_siglip_loss_reference(image, text, s, -3.0, 1),
        siglip_loss_reference(image, text, s, -3.0),
    )


# -- the tiled paths against the references -----------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("b", "k"), [(1, 1), (1, 3), (37, 1), (37, 2), (19, 3)])
def test_softmax_fp32(backend, b, k):
    bias, r_bias = _check(_softmax(backend), _softmax_ref, b, k, 64, torch.float32)
    assert bias.grad.item() == 0.0  # softmax ignores a shared shift: exactly zero
    assert abs(r_bias.grad.item()) < 1e-12


@pytest.mark.parametrize("backend", BACKENDS)
def test_softmax_bf16(backend):
    _check(_softmax(backend), _softmax_ref, 37, 2, 64, torch.bfloat16)


@pytest.mark.parametrize("backend", BACKENDS)
def test_softmax_fp16_small_scale(backend):
    _check(_softmax(backend), _softmax_ref, 21, 3, 64, torch.float16, scale=1 / 0.07, seed=3)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("b", "k"), [(1, 1), (1, 3), (37, 1), (37, 2), (19, 3)])
def test_sigmoid_fp32(backend, b, k):
    bias, r_bias = _check(
        _sigmoid(backend), multipos_siglip_loss_reference, b, k, 64, torch.float32, bias=-10.0
    )
    assert_near(bias.grad, r_bias.grad, LOSS_TOL[torch.float32], torch.float32, "bias grad")


@pytest.mark.parametrize("backend", BACKENDS)
def test_sigmoid_bf16(backend):
    bias, r_bias = _check(
        _sigmoid(backend), multipos_siglip_loss_reference, 37, 2, 64, torch.bfloat16, bias=-10.0
    )
    assert_near(bias.grad, r_bias.grad, LOSS_TOL[torch.bfloat16], torch.bfloat16, "bias grad")


# -- K = 1 is the existing loss ---------------------------------------------------------------


def _grads(fn, *tensors):
    inputs = leaves(*tensors)
    loss = fn(*inputs)
    return [loss, *torch.autograd.grad(loss, inputs)]


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_positive_is_the_clip_loss(backend):
    image, text = (t.float() for t in _features(37, 1, 64, seed=2))
    s = torch.tensor(100.0)
    ours = _grads(lambda *a: multipos_clip_loss(*a, positives=1, backend=backend), image, text, s)
    theirs = _grads(lambda *a: clip_loss(*a, backend=backend), image, text, s)
    # elementwise, at fp32 rounding: the chunks differ (multipos.py's are smaller), so
    # sums run in another order
    for got, want in zip(ours, theirs, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_positive_is_the_siglip_loss(backend):
    image, text = (t.float() for t in _features(37, 1, 64, seed=2))
    s, b = torch.tensor(10.0), torch.tensor(-10.0)
    ours = _grads(
        lambda *a: multipos_siglip_loss(*a, positives=1, backend=backend), image, text, s, b
    )
    theirs = _grads(lambda *a: siglip_loss(*a, backend=backend), image, text, s, b)
    for got, want in zip(ours, theirs, strict=True):  # chunks differ: another sum order
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


# -- memory and arguments ------------------------------------------------------------------


@pytest.mark.parametrize(
    "loss",
    [
        pytest.param(lambda i, t, s: multipos_clip_loss(i, t, s, positives=2), id="softmax"),
        pytest.param(
            lambda i, t, s: multipos_siglip_loss(i, t, s, -5.0, positives=2), id="sigmoid"
        ),
    ],
)
def test_no_batch_by_batch_tensor(loss):
    """Forward and backward never create a tensor as large as the B×BK logits."""
    b, k = 48, 2
    image, text = leaves(*_features(b, k, 16), dtype=torch.float32)
    s = torch.tensor(20.0, requires_grad=True)
    with _LargestTensor() as mode:
        loss(image, text, s).backward()
    assert 0 < mode.largest < b * b * k


@pytest.mark.parametrize("fn", [multipos_clip_loss, multipos_siglip_loss])
def test_bad_shapes_are_refused(fn):
    with pytest.raises(ValueError, match="need 8 texts"):
        fn(torch.randn(4, 8), torch.randn(6, 8), 1.0, positives=2)
    with pytest.raises(ValueError, match="positives"):
        fn(torch.randn(4, 8), torch.randn(4, 8), 1.0, positives=0)
    with pytest.raises(ValueError):
        fn(torch.randn(4, 8), torch.randn(8, 9), 1.0, positives=2)


# -- dispatch on CUDA tensors, without a GPU (FakeTensorMode, as test_dispatch does) -------


@pytest.mark.skipif(not triton_available(), reason="triton is not installed")
def test_cuda_tensors_run_the_triton_kernels(fake_cuda, monkeypatch):
    from vecap_cli.core import multipos_triton

    assert multipos._kernels(fake_cuda(4, 8), None).__name__ == "vecap_cli.core.multipos_triton"
    called = []

    def loss_rows(x, y, scale, bias, k, offset):
        called.append(k)
        return x.new_zeros(x.shape[0])

    monkeypatch.setattr(multipos_triton.Sigmoid, "loss_rows", staticmethod(loss_rows))
    multipos_siglip_loss(fake_cuda(4, 8), fake_cuda(12, 8), 10.0, -10.0, positives=3)
    assert called == [3]


def test_torch_path_runs_on_cuda_tensors(fake_cuda):
    """Forced to torch, both losses keep CUDA tensors on CUDA: no hidden CPU tensor
    (the positive masks and views included)."""
    image, text = fake_cuda(6, 8), fake_cuda(12, 8)
    loss = multipos_clip_loss(image, text, 10.0, positives=2, backend="torch")
    loss = loss + multipos_siglip_loss(image, text, 10.0, -1.0, positives=2, backend="torch")
    loss = loss + multipos_clip_loss_reference(image, text, 10.0, 2)
    assert loss.device.type == "cuda" and loss.dtype == torch.float32


def test_the_benchmark_steps_run(monkeypatch):
    """bench_multipos / make gpu-check's rows, tiny: both impls of both losses step."""
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_kernels.py"
    spec = importlib.util.spec_from_file_location("bench_kernels_for_test", path)
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, bench)  # its dataclasses look it up
    spec.loader.exec_module(bench)
    for op in bench.MULTIPOS:
        for impl in ("dense", "vecap"):
            bench._multipos_step(bench.Case(op, impl, "cpu", "float32", (8, 2, 16)), torch)()


# -- one rank's local form -------------------------------------------------------------------


def _ranks_loss(loss, world):
    """The mean of `world` ranks' local losses on slices of one batch, as DDP sees it."""

    def run(image, text, s, bias, k):
        b = image.shape[0] // world
        parts = [
            loss(r, image[r * b : (r + 1) * b], text[r * b * k : (r + 1) * b * k], image, text, s)
            for r in range(world)
        ]
        return sum(parts) / world + 0.0 * bias

    return run


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("world", "b", "k"), [(1, 7, 3), (3, 5, 2), (2, 9, 1)])
def test_local_softmax_ranks_are_the_whole_batch(backend, world, b, k):
    """Each rank's images and texts against everyone's: the ranks' mean loss and the
    gradients through it are the one-process loss of the whole batch's."""

    def loss(rank, image, text, all_image, all_text, s):
        return multipos_clip_loss_local(
            image, text, all_image, all_text, s,
            positives=k, label_offset=rank * b, backend=backend,
        )  # fmt: skip

    _check(_ranks_loss(loss, world), _softmax_ref, b * world, k, 32, torch.float32)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("world", "b", "k"), [(3, 5, 2), (2, 9, 1)])
def test_local_sigmoid_ranks_are_the_whole_batch(backend, world, b, k):
    def loss(rank, image, text, all_image, all_text, s):
        return multipos_siglip_loss(
            image, all_text, s, -4.0, positives=k, label_offset=rank * b, backend=backend
        )

    def ref(image, text, s, bias, k):
        return multipos_siglip_loss_reference(image, text, s, -4.0, k) + 0.0 * bias

    _check(_ranks_loss(loss, world), ref, b * world, k, 32, torch.float32)


def test_local_form_refuses_offsets_past_the_batch():
    image, text = torch.randn(4, 8), torch.randn(8, 8)
    with pytest.raises(ValueError, match="label_offset 3"):
        multipos_clip_loss_local(image, text, image, text, 1.0, positives=2, label_offset=3)
    with pytest.raises(ValueError, match="label_offset 1"):
        multipos_siglip_loss(image, text, 1.0, positives=2, label_offset=1)


def test_the_local_form_builds_no_rank_by_batch_tensor():
    """One rank's b images against the B·K gathered texts: no (b, B·K) logits either."""
    b, k, world = 24, 2, 2
    image, text = leaves(*_features(b * world, k, 16), dtype=torch.float32)
    s = torch.tensor(20.0, requires_grad=True)
    with _LargestTensor() as mode:
        multipos_clip_loss_local(
            image[b:], text[b * k :], image, text, s, positives=k, label_offset=b
        ).backward()
    assert 0 < mode.largest < b * world * b * k
