"""SigLIP loss: values and every gradient against open_clip's SigLipLoss in fp64."""

import inspect

import pytest
import torch
from open_clip.loss import SigLipLoss

from tests.core.conftest import BACKENDS, LOSS_TOL, assert_near, leaves, paired_features
from vecap_cli.core import tiles
from vecap_cli.core.siglip import FusedSigLipLoss, siglip_loss, siglip_loss_reference


@pytest.fixture(autouse=True)
def _small_torch_tiles(monkeypatch):
    """Chunks of a few rows, so the torch path crosses chunk edges at test sizes."""
    monkeypatch.setattr(tiles, "TILE_ELEMENTS", 512)


def _check(backend, b, d, dtype, scale=100.0, bias=-10.0, seed=0):
    image64, text64 = paired_features(b, d, seed)
    image, text = leaves(image64, text64, dtype=dtype)
    (s,) = leaves(torch.tensor(scale))
    bias_t = leaves(torch.tensor(bias))[0] if bias is not None else None
    loss = siglip_loss(image, text, s, bias_t, backend=backend)
    loss.backward()

    ref_image, ref_text, ref_s = leaves(image, text, s, dtype=torch.float64)
    ref_bias = leaves(bias_t, dtype=torch.float64)[0] if bias is not None else None
    ref = SigLipLoss()(ref_image, ref_text, ref_s, ref_bias)
    ref.backward()

    tol = LOSS_TOL[dtype]
    assert loss.dtype == torch.float32
    assert_near(loss, ref, tol, dtype, "loss")
    assert image.grad.dtype == dtype and text.grad.dtype == dtype
    assert_near(image.grad, ref_image.grad, tol, dtype, "image grad")
    assert_near(text.grad, ref_text.grad, tol, dtype, "text grad")
    assert_near(s.grad, ref_s.grad, tol, dtype, "scale grad")
    if bias is not None:
        assert_near(bias_t.grad, ref_bias.grad, tol, dtype, "bias grad")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("b", [1, 37, 70])
@pytest.mark.parametrize("d", [64, 512, 768])
def test_fp32_matches_open_clip(backend, b, d):
    _check(backend, b, d, torch.float32, bias=None if d == 512 else -10.0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("b", "d"), [(37, 64), (70, 768)])
def test_bf16_matches_open_clip(backend, b, d):
    _check(backend, b, d, torch.bfloat16)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fp16_and_siglip_init(backend):
    """SigLIP's initialisation: scale 10, bias −10."""
    _check(backend, 33, 64, torch.float16, scale=10.0, bias=-10.0, seed=3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_rows_against_gathered_columns(backend):
    """A rank's rows against all texts, positives at label_offset + i."""
    b, n, offset = 21, 63, 42
    image64, text64 = paired_features(b, 64, seed=2, n=n, offset=offset)
    image, text = leaves(image64, text64, dtype=torch.float32)
    s, bias = leaves(torch.tensor(100.0), torch.tensor(-10.0))
    loss = siglip_loss(image, text, s, bias, label_offset=offset, backend=backend)
    loss.backward()

    r_image, r_text, r_s, r_bias = leaves(image, text, s, bias, dtype=torch.float64)
    ref = siglip_loss_reference(r_image, r_text, r_s, r_bias, label_offset=offset)
    ref.backward()
    for got, want in [
        (loss, ref),
        (image.grad, r_image.grad),
        (text.grad, r_text.grad),
        (s.grad, r_s.grad),
        (bias.grad, r_bias.grad),
    ]:
        assert_near(got, want, LOSS_TOL[torch.float32], torch.float32)


def test_reference_is_open_clips_formula():
    image, text = paired_features(19, 16)
    s, bias = torch.tensor(10.0, dtype=torch.float64), torch.tensor(-3.0, dtype=torch.float64)
    assert torch.allclose(
        siglip_loss_reference(image, text, s, bias), SigLipLoss()(image, text, s, bias)
    )


def test_module_has_open_clips_interface():
    ours = list(inspect.signature(FusedSigLipLoss.__init__).parameters)
    theirs = list(inspect.signature(SigLipLoss.__init__).parameters)
    assert ours[: len(theirs)] == theirs
    assert list(inspect.signature(FusedSigLipLoss.forward).parameters) == list(
        inspect.signature(SigLipLoss.forward).parameters
    )


def test_module_output_dict():
    image, text = paired_features(9, 8)
    s, bias = torch.tensor(10.0, dtype=torch.float64), torch.tensor(-10.0, dtype=torch.float64)
    out = FusedSigLipLoss()(image, text, s, bias, output_dict=True)
    assert torch.allclose(out["contrastive_loss"].double(), SigLipLoss()(image, text, s, bias))


def test_unknown_dist_impl_is_refused():
    with pytest.raises(ValueError):
        FusedSigLipLoss(dist_impl="ring")
