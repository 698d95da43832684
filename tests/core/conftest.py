"""Shared setup for the core kernel tests (TRITON_INTERPRET is set in tests/conftest.py,
before anything can import Triton)."""

import pytest
import torch
import torch.nn.functional as F

from vecap_cli.core.dispatch import ENV_VAR, triton_available

# the tests import the tolerances from here; see vecap_cli/core/parity.py for the rule
from vecap_cli.core.parity import ABS_FLOOR, ATTN_TOL, LOSS_TOL, parity  # noqa: F401

BACKENDS = [
    "torch",
    pytest.param(
        "triton",
        marks=pytest.mark.skipif(not triton_available(), reason="triton is not installed"),
    ),
]


@pytest.fixture(autouse=True)
def _no_dispatch_override(monkeypatch):
    """Tests choose backends explicitly; an exported VECAP_KERNELS must not leak in."""
    monkeypatch.delenv(ENV_VAR, raising=False)


@pytest.fixture
def fake_cuda():
    """Tensors that say they live on cuda:0 (FakeTensorMode): they carry shapes and dtypes
    through torch ops without memory or a device, enough for every dispatch decision and
    for the torch path's forward on "CUDA" tensors."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        yield lambda *shape, dtype=torch.float32: torch.randn(*shape, device="cuda", dtype=dtype)


def assert_near(
    actual: torch.Tensor, reference: torch.Tensor, rtol: float, dtype: torch.dtype, what: str = ""
) -> None:
    """‖actual − reference‖ ≤ rtol·‖reference‖ + floor[dtype]·√numel, norm-wise against
    fp64: the rule `make gpu-check` applies too (vecap_cli/core/parity.py)."""
    assert actual.shape == reference.shape, (what, actual.shape, reference.shape)
    diff, bound = parity(actual, reference, rtol, dtype)
    scale = reference.detach().double().norm().item()
    assert diff <= bound, f"{what}: ‖diff‖ {diff:.3g} > {bound:.3g} (‖ref‖ {scale:.3g})"


def paired_features(b: int, d: int, seed: int = 0, n: int | None = None, offset: int = 0):
    """Unit image rows (b, D) and text rows (n, D) with text offset+i a noisy copy of image i.

    Matching pairs, as after training, make the softmax rows sharp at
    logit_scale 100: the regime where precision is hardest.
    """
    gen = torch.Generator().manual_seed(seed)
    n = b if n is None else n
    image = F.normalize(torch.randn(b, d, generator=gen, dtype=torch.float64), dim=-1)
    text = F.normalize(torch.randn(n, d, generator=gen, dtype=torch.float64), dim=-1)
    noise = torch.randn(b, d, generator=gen, dtype=torch.float64)
    text[offset : offset + b] = F.normalize(image + 0.7 * noise, dim=-1)
    return image, text


def leaves(*tensors, dtype=None):
    """Fresh leaf copies (requiring grad) in `dtype`, or in their own dtype."""
    return [t.detach().to(dtype or t.dtype).clone().requires_grad_(True) for t in tensors]
