"""How near a kernel's output must be to its fp64 reference: one rule for the tests
and for `make gpu-check` (benchmarks/gpu_check.py).

Parity is norm-wise: ‖actual − reference‖ ≤ rtol · ‖reference‖ + atol · √numel,
rtol per input dtype, atol an absolute floor (an RMS per element). The floor is
there because a quantity that is zero in theory (the gradient of a softmax over
one key, a B = 1 loss) has an fp64 reference of ~1e-16 and a purely relative
error of 1e9 whatever the kernel does (the fp32 loss of a B = 1 batch at logit
scale 100 comes out as 2e-6, one rounding of its logit of ~80). A floor is about
one rounding at that magnitude: far below any real bug on O(1) tensors.
"""

from __future__ import annotations

import torch

LOSS_TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 1e-2}
# Attention rounds probabilities to the input dtype before each dot (as flash
# attention does on GPUs): one more half-precision rounding than the losses.
ATTN_TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 1e-2}
ABS_FLOOR = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 1e-3}


def parity(
    actual: torch.Tensor, reference: torch.Tensor, rtol: float, dtype: torch.dtype
) -> tuple[float, float]:
    """(‖actual − reference‖, the bound it must not exceed); shapes must agree."""
    actual, reference = actual.detach().double(), reference.detach().double()
    if actual.shape != reference.shape:
        raise ValueError(f"shape {tuple(actual.shape)} != reference {tuple(reference.shape)}")
    diff, scale = (actual - reference).norm().item(), reference.norm().item()
    return diff, rtol * scale + ABS_FLOOR[dtype] * max(reference.numel(), 1) ** 0.5
