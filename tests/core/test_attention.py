"""flash_attention against SDPA in fp64: forward and backward, masks, odd lengths."""

import pytest
import torch
import torch.nn.functional as F

from tests.core.conftest import ATTN_TOL, BACKENDS, assert_near
from vecap_cli.core.attention import attention_reference, flash_attention


def _qkv(b, h, nq, nk, d, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, h, n, d, generator=gen) for n in (nq, nk, nk))
    return [t.to(dtype).requires_grad_(True) for t in (q, k, v)]


def _sdpa64(q, k, v, causal, key_padding_mask, scale=None):
    """SDPA in fp64 on the same (rounded) inputs, with a boolean keep-mask for padding."""
    q64, k64, v64 = (t.detach().double().requires_grad_(True) for t in (q, k, v))
    if key_padding_mask is None:
        out = F.scaled_dot_product_attention(q64, k64, v64, is_causal=causal, scale=scale)
        return out, (q64, k64, v64)
    keep = ~key_padding_mask[:, None, None, :]  # (B, 1, 1, Nk)
    if causal:
        keep = keep & torch.ones(q.shape[2], k.shape[2], dtype=torch.bool).tril()
    out = F.scaled_dot_product_attention(q64, k64, v64, attn_mask=keep, scale=scale)
    return out, (q64, k64, v64)


def _check(backend, shape, dtype, causal=False, key_padding_mask=None, scale=None):
    q, k, v = _qkv(*shape, dtype)
    out = flash_attention(
        q, k, v, causal=causal, key_padding_mask=key_padding_mask, scale=scale, backend=backend
    )
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    out.backward(grad_out)
    ref, ref_inputs = _sdpa64(q, k, v, causal, key_padding_mask, scale)
    ref.backward(grad_out.double())

    tol = ATTN_TOL[dtype]
    assert out.dtype == dtype and out.shape == ref.shape
    assert_near(out, ref, tol, dtype, "out")
    for got, want in zip((q, k, v), ref_inputs, strict=True):
        assert got.grad.dtype == dtype
        assert_near(got.grad, want.grad, tol, dtype, "grad")


# (B, H, Nq, Nk, d, causal): ViT-B/16's 197 tokens, the text tower's 77 (causal),
# CoCa-like cross-attention (Nq ≠ Nk), and each supported head dim.
SHAPES = [
    ((1, 2, 197, 197, 64), False),
    ((2, 3, 77, 77, 64), True),
    ((2, 2, 45, 197, 32), False),
    ((1, 2, 77, 30, 32), True),
    ((1, 1, 40, 40, 128), True),
    ((2, 1, 1, 1, 32), False),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("shape", "causal"), SHAPES)
def test_fp32_matches_sdpa(backend, shape, causal):
    _check(backend, shape, torch.float32, causal=causal)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("shape", "causal", "dtype"),
    [((2, 2, 77, 77, 64), True, torch.bfloat16), ((1, 2, 33, 50, 128), False, torch.float16)],
)
def test_half_precision_matches_sdpa(backend, shape, causal, dtype):
    _check(backend, shape, dtype, causal=causal)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("causal", [False, True])
def test_key_padding(backend, causal):
    kpm = torch.zeros(3, 77, dtype=torch.bool)
    kpm[0, 50:] = True  # a padded caption
    kpm[1, 1::2] = True  # scattered holes (key 0 stays, so no query is left without keys)
    _check(backend, (3, 2, 77, 77, 32), torch.float32, causal=causal, key_padding_mask=kpm)


@pytest.mark.parametrize("backend", BACKENDS)
def test_explicit_scale(backend):
    _check(backend, (1, 2, 21, 21, 64), torch.float32, scale=0.3)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("causal", [False, True])
def test_fully_masked_rows_are_zero_not_nan(backend, causal):
    """A batch element whose keys are all padding: zero output and gradients, no NaN."""
    q, k, v = _qkv(2, 2, 19, 19, 32, torch.float32)
    kpm = torch.zeros(2, 19, dtype=torch.bool)
    kpm[0, 7:] = True
    kpm[1] = True
    out = flash_attention(q, k, v, causal=causal, key_padding_mask=kpm, backend=backend)
    out.sum().backward()
    for t in (out, q.grad, k.grad, v.grad):
        assert torch.isfinite(t).all()
    assert (out[1] == 0).all() and (q.grad[1] == 0).all() and (k.grad[1] == 0).all()

    ref = attention_reference(*(t.detach().double() for t in (q, k, v)), causal, kpm)
    assert_near(out, ref, ATTN_TOL[torch.float32], torch.float32, "out")


def test_reference_matches_sdpa():
    q, k, v = (t.detach().double() for t in _qkv(2, 2, 13, 17, 16, torch.float32))
    kpm = torch.zeros(2, 17, dtype=torch.bool)
    kpm[1, 5:] = True
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=~kpm[:, None, None, :])
    assert torch.allclose(attention_reference(q, k, v, key_padding_mask=kpm), want)
    want = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert torch.allclose(attention_reference(q, k, v, causal=True), want)


@pytest.mark.parametrize("backend", BACKENDS)
def test_strided_inputs(backend):
    """q, k, v as open_clip makes them: a (B, N, H, d) view transposed to (B, H, N, d)."""
    x = torch.randn(2, 21, 3, 2, 32, requires_grad=True)
    q, k, v = (x[:, :, i].transpose(1, 2) for i in range(3))
    out = flash_attention(q, k, v, causal=True, backend=backend)
    ref = attention_reference(*(t.detach().double() for t in (q, k, v)), causal=True)
    assert_near(out, ref, ATTN_TOL[torch.float32], torch.float32, "out")


def test_bad_shapes_are_refused():
    q = torch.randn(1, 2, 5, 8)
    with pytest.raises(ValueError):
        flash_attention(q, torch.randn(1, 2, 5, 4), torch.randn(1, 2, 5, 4))
    with pytest.raises(ValueError):
        flash_attention(q, q, q, key_padding_mask=torch.zeros(1, 6, dtype=torch.bool))
