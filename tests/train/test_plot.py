"""The loss PNG: drawn with Pillow, readable, honest about its data."""

import math

import pytest
from PIL import Image

from vecap_cli.train.plot import MEAN, RAW, SIZE, moving_average, nice_ticks, plot_loss


def colours(path) -> set[tuple[int, int, int]]:
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == SIZE
        return {c for _, c in image.convert("RGB").getcolors(SIZE[0] * SIZE[1])}


def test_a_long_run_shows_each_step_and_the_moving_average(tmp_path):
    losses = [3 * math.exp(-i / 300) + 0.1 * math.sin(i) for i in range(2_000)]
    plot_loss(losses, str(tmp_path / "loss.png"), "vecap-tiny")
    assert {RAW, MEAN} <= colours(tmp_path / "loss.png")


@pytest.mark.parametrize("losses", [[2.3], [1.0] * 10, [math.nan, 2.0, math.inf, 1.5], [math.nan]])
def test_short_flat_or_broken_runs_still_draw(tmp_path, losses):
    plot_loss(losses, str(tmp_path / "loss.png"))
    drawn = colours(tmp_path / "loss.png")
    assert MEAN in drawn and RAW not in drawn  # too short to smooth: one curve, dark


def test_ticks_are_round_and_cover_the_range():
    for lo, hi in [(0.512, 4.8), (1, 3000), (2.3, 2.3), (0.0123, 0.0345), (-1, 1)]:
        ticks = nice_ticks(lo, hi, 5)
        step = ticks[1] - ticks[0]
        assert ticks[0] <= lo and ticks[-1] >= hi and 3 <= len(ticks) <= 9
        mantissa = step / 10 ** math.floor(math.log10(step))
        assert any(math.isclose(mantissa, m) for m in (1, 2, 2.5, 5))


def test_a_short_run_labels_whole_steps_only(tmp_path, monkeypatch):
    from PIL import ImageDraw

    labels = []
    real_text = ImageDraw.ImageDraw.text

    def text(self, xy, content, *args, **kwargs):
        labels.append(content)
        return real_text(self, xy, content, *args, **kwargs)

    monkeypatch.setattr(ImageDraw.ImageDraw, "text", text)
    plot_loss([2.0, 1.8, 1.7], str(tmp_path / "loss.png"))
    assert [x for x in labels if x.isdigit()] == ["1", "2", "3"]


def test_the_moving_average_skips_values_that_are_not_finite():
    assert moving_average([1, 3, math.nan, 5], 2) == [1, 2, 3, 5]
    assert math.isnan(moving_average([math.nan], 3)[0])
