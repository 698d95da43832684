"""Shared setup for the core kernel tests (TRITON_INTERPRET is set in tests/conftest.py,
before anything can import Triton)."""

import pytest
import torch
import torch.nn.functional as F

from vecap_cli.core.dispatch import ENV_VAR, triton_available

BACKENDS = [
    "torch",
    pytest.param(
        "triton",
        marks=pytest.mark.skipif(not triton_available(), reason="triton is not installed"),
    ),
]

# Parity is checked norm-wise against fp64: ‖actual − reference‖ must be within
#   rtol · ‖reference‖ + atol · √numel
# rtol per input dtype; atol is the absolute floor (an RMS per element), because a
# quantity that is zero in theory (the gradient of a softmax over one key, a B = 1
# loss) has an fp64 reference of ~1e-16 and a purely relative error of 1e9 there,
# whatever the kernel does (the fp32 loss of a B = 1 batch at logit scale 100 comes
# out as 2e-6, one rounding of its logit of ~80). A floor is about one rounding at
# that magnitude: far below any real bug on O(1) tensors.
LOSS_TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 1e-2}
# Attention rounds probabilities to the input dtype before each dot (as flash
# attention does on GPUs): one more half-precision rounding than the losses.
ATTN_TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 1e-2}
ABS_FLOOR = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 1e-3}


@pytest.fixture(autouse=True)
def _no_dispatch_override(monkeypatch):
    """Tests choose backends explicitly; an exported VECAP_KERNELS must not leak in."""
    monkeypatch.delenv(ENV_VAR, raising=False)


def assert_near(
    actual: torch.Tensor, reference: torch.Tensor, rtol: float, dtype: torch.dtype, what: str = ""
) -> None:
    """‖actual − reference‖ ≤ rtol·‖reference‖ + ABS_FLOOR[dtype]·√numel (see above)."""
    actual, reference = actual.detach().double(), reference.detach().double()
    assert actual.shape == reference.shape, (what, actual.shape, reference.shape)
    diff, scale = (actual - reference).norm().item(), reference.norm().item()
    bound = rtol * scale + ABS_FLOOR[dtype] * max(reference.numel(), 1) ** 0.5
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
