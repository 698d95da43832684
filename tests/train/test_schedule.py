import itertools
import math

import pytest

from vecap_cli.train.schedule import cosine_lr


def test_warmup_rises_linearly_then_cosine_falls_to_zero():
    lrs = [cosine_lr(s, 1.0, warmup=4, total=14) for s in range(14)]
    assert lrs[:4] == [0.25, 0.5, 0.75, 1.0]
    assert lrs[4] == 1.0 and lrs[9] == pytest.approx(0.5)
    assert all(a > b for a, b in itertools.pairwise(lrs[4:]))
    assert cosine_lr(14, 1.0, 4, 14) == pytest.approx(0.0)


def test_no_warmup_starts_at_the_peak():
    assert cosine_lr(0, 3e-4, 0, 100) == 3e-4
    assert cosine_lr(50, 2.0, 0, 100) == pytest.approx(1 + math.cos(math.pi / 2))
