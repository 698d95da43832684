"""The parity check every kernel test uses: relative where the reference has size,
an absolute floor per dtype where it is zero in theory."""

import pytest
import torch

from tests.core.conftest import ABS_FLOOR, LOSS_TOL, assert_near


def test_zero_in_theory_passes_within_the_floor():
    """A gradient that is zero in theory (softmax over one key): the fp64 reference
    is rounding noise, the kernel's a little more; a purely relative check gave 1e9."""
    reference = torch.full((2, 1, 1, 32), 1e-16, dtype=torch.float64)
    actual = torch.full((2, 1, 1, 32), 2e-6, dtype=torch.float32)
    assert_near(actual, reference, LOSS_TOL[torch.float32], torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_real_errors_still_fail(dtype):
    reference = torch.linspace(-1, 1, 64, dtype=torch.float64)
    with pytest.raises(AssertionError):
        assert_near(reference + 0.1, reference, LOSS_TOL[dtype], dtype)
    with pytest.raises(AssertionError):  # a wrong zero-in-theory gradient
        assert_near(torch.full((64,), 50 * ABS_FLOOR[dtype]), torch.zeros(64), 0.0, dtype)


def test_relative_part_scales_with_the_reference():
    reference = torch.full((100,), 1e3, dtype=torch.float64)
    assert_near(reference * (1 + 5e-6), reference, 1e-5, torch.float32)
    with pytest.raises(AssertionError):
        assert_near(reference * (1 + 5e-5), reference, 1e-5, torch.float32)


def test_shapes_must_agree():
    with pytest.raises(AssertionError):
        assert_near(torch.zeros(3), torch.zeros(1, 3), 1e-5, torch.float32)
