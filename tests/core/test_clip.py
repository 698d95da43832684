"""CLIP loss: values and every gradient against open_clip's ClipLoss in fp64."""

import inspect

import pytest
import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss
from torch.utils._python_dispatch import TorchDispatchMode

from tests.core.conftest import BACKENDS, LOSS_TOL, assert_near, leaves, paired_features
from vecap_cli.core import tiles
from vecap_cli.core.clip import FusedClipLoss, clip_loss, clip_loss_local, clip_loss_reference

SCALE_CLAMP = 100.0  # open_clip clamps exp(logit_scale) at 100


@pytest.fixture(autouse=True)
def _small_torch_tiles(monkeypatch):
    """Chunks of a few rows, so the torch path crosses chunk edges at test sizes."""
    monkeypatch.setattr(tiles, "TILE_ELEMENTS", 512)


def _run(fn, image, text, scale, bias):
    loss = fn(image, text, scale, bias)
    loss.backward()
    return loss


def _check(backend, b, d, dtype, scale=SCALE_CLAMP, bias=None, seed=0):
    image64, text64 = paired_features(b, d, seed)
    image, text = leaves(image64, text64, dtype=dtype)
    (s,) = leaves(torch.tensor(scale))
    bias_t = leaves(torch.tensor(bias))[0] if bias is not None else None
    loss = _run(lambda *a: clip_loss(*a, backend=backend), image, text, s, bias_t)

    # the oracle: open_clip's own ClipLoss on the same (rounded) inputs in fp64
    ref_image, ref_text, ref_s = leaves(image, text, s, dtype=torch.float64)
    ref_bias = leaves(bias_t, dtype=torch.float64)[0] if bias is not None else None
    ref = _run(ClipLoss(), ref_image, ref_text, ref_s, ref_bias)

    tol = LOSS_TOL[dtype]
    assert loss.dtype == torch.float32
    assert_near(loss, ref, tol, dtype, "loss")
    assert image.grad.dtype == dtype and text.grad.dtype == dtype
    assert_near(image.grad, ref_image.grad, tol, dtype, "image grad")
    assert_near(text.grad, ref_text.grad, tol, dtype, "text grad")
    assert_near(s.grad, ref_s.grad, tol, dtype, "scale grad")
    if bias is not None:  # softmax ignores a shared shift: the gradient is exactly zero
        assert bias_t.grad.item() == 0.0
        assert abs(ref_bias.grad.item()) < 1e-12


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("b", [1, 37, 70])
@pytest.mark.parametrize("d", [64, 512, 768])
def test_fp32_matches_open_clip(backend, b, d):
    _check(backend, b, d, torch.float32, bias=-5.0 if d == 512 else None)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("b", "d"), [(37, 64), (70, 768)])
def test_bf16_matches_open_clip(backend, b, d):
    _check(backend, b, d, torch.bfloat16)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fp16_and_small_scale(backend):
    _check(backend, 33, 64, torch.float16, scale=1 / 0.07, seed=3)


def test_reference_is_open_clips_formula():
    image, text = paired_features(19, 16)
    s = torch.tensor(30.0, dtype=torch.float64)
    assert torch.allclose(clip_loss_reference(image, text, s), ClipLoss()(image, text, s))


@pytest.mark.parametrize("backend", BACKENDS)
def test_local_loss_matches_open_clips_formula(backend):
    """One rank's rows against gathered columns, labels shifted by b·rank."""
    b, world, rank = 23, 3, 1
    image64, text64 = paired_features(b * world, 64, seed=5)
    image, text, all_image, all_text = leaves(
        image64[b : 2 * b], text64[b : 2 * b], image64, text64, dtype=torch.float32
    )
    s = torch.tensor(SCALE_CLAMP, requires_grad=True)
    loss = clip_loss_local(
        image, text, all_image, all_text, s, label_offset=b * rank, backend=backend
    )
    loss.backward()

    r_image, r_text, r_all_image, r_all_text, r_s = leaves(
        image, text, all_image, all_text, s, dtype=torch.float64
    )
    labels = torch.arange(b) + b * rank
    ref = (
        F.cross_entropy(r_s * r_image @ r_all_text.T, labels)
        + F.cross_entropy(r_s * r_text @ r_all_image.T, labels)
    ) / 2
    ref.backward()
    for got, want in [
        (loss, ref),
        (image.grad, r_image.grad),
        (text.grad, r_text.grad),
        (all_image.grad, r_all_image.grad),
        (all_text.grad, r_all_text.grad),
        (s.grad, r_s.grad),
    ]:
        assert_near(got, want, LOSS_TOL[torch.float32], torch.float32)


class _LargestTensor(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, tuple | list) else [out]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_batch_by_batch_tensor(backend):
    """Forward and backward never create a tensor as large as the B×B logits."""
    b, d = 96, 16
    image, text = leaves(*paired_features(b, d), dtype=torch.float32)
    s = torch.tensor(20.0, requires_grad=True)
    with _LargestTensor() as mode:
        clip_loss(image, text, s, backend=backend).backward()
    assert 0 < mode.largest < b * b


def test_module_has_open_clips_interface():
    ours = list(inspect.signature(FusedClipLoss.__init__).parameters)
    theirs = list(inspect.signature(ClipLoss.__init__).parameters)
    assert ours[: len(theirs)] == theirs
    assert list(inspect.signature(FusedClipLoss.forward).parameters) == list(
        inspect.signature(ClipLoss.forward).parameters
    )


def test_module_output_dict_and_single_process():
    image, text = paired_features(9, 8)
    s = torch.tensor(10.0, dtype=torch.float64)
    out = FusedClipLoss()(image, text, s, output_dict=True)
    assert set(out) == {"contrastive_loss"}
    assert torch.allclose(out["contrastive_loss"].double(), ClipLoss()(image, text, s))


def test_horovod_is_refused():
    with pytest.raises(NotImplementedError):
        FusedClipLoss(use_horovod=True)


def test_mismatched_features_are_refused():
    with pytest.raises(ValueError):
        clip_loss(torch.randn(4, 8), torch.randn(4, 9), 1.0)
    with pytest.raises(ValueError):
        clip_loss(torch.randn(4, 8), torch.randn(5, 8), 1.0)
