"""The loss curve as a PNG, written once at the end of a run.

Drawn with Pillow, which the image pipeline has loaded already. matplotlib drew it
before, and its libraries and fonts added ~28 MiB on top of the trained model:
enough to put `vecap train`'s peak memory above open_clip's own trainer at a small
batch. The chart is simple: the per-step loss, its moving average, ticks, a legend.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

SIZE = (800, 450)
LEFT, RIGHT, TOP, BOTTOM = 78, 24, 40, 56  # margins around the plot area, px
RAW = (158, 202, 225)  # light blue: each step
MEAN = (31, 119, 180)  # blue: the moving average
INK, GRID, FRAME = (40, 40, 40), (228, 228, 228), (120, 120, 120)


def plot_loss(losses: Sequence[float], path: str, title: str = "") -> None:
    """Per-step loss, and its moving average when there are enough steps to smooth.
    Steps whose loss is not finite leave a gap."""
    from PIL import Image, ImageDraw, ImageFont

    image = Image.new("RGB", SIZE, "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=13)
    x0, y0, x1, y1 = LEFT, TOP, SIZE[0] - RIGHT, SIZE[1] - BOTTOM  # the plot area
    n = len(losses)
    finite = [v for v in losses if math.isfinite(v)]
    lo, hi = (min(finite), max(finite)) if finite else (0.0, 1.0)
    yticks = nice_ticks(lo, hi, 5)
    xticks = [t for t in nice_ticks(1, max(n, 2), 6) if 1 <= t <= max(n, 1) and t == int(t)]
    ylo, yhi = yticks[0], yticks[-1]

    def px(step: float) -> float:
        return x0 + (step - 1) / max(n - 1, 1) * (x1 - x0)

    def py(value: float) -> float:
        return y1 - (value - ylo) / (yhi - ylo) * (y1 - y0)

    step = yticks[1] - yticks[0]
    decimals = next(d for d in range(12) if abs(round(step, d) - step) <= 1e-9 * step)
    for tick in yticks:
        y = py(tick)
        draw.line([(x0, y), (x1, y)], fill=GRID)
        draw.text((x0 - 6, y), f"{tick:.{decimals}f}", fill=INK, font=font, anchor="rm")
    for tick in xticks:
        x = px(tick)
        draw.line([(x, y0), (x, y1)], fill=GRID)
        draw.text((x, y1 + 6), f"{int(tick):,}", fill=INK, font=font, anchor="mt")
    draw.rectangle([x0, y0, x1, y1], outline=FRAME)

    window = max(1, n // 50)
    _curve(draw, losses, px, py, RAW if window > 1 else MEAN, 1, x1 - x0)
    if window > 1:
        _curve(draw, moving_average(losses, window), px, py, MEAN, 2, x1 - x0)

    draw.text(((x0 + x1) / 2, 12), title, fill=INK, font=font, anchor="mt")
    draw.text(((x0 + x1) / 2, SIZE[1] - 14), "step", fill=INK, font=font, anchor="mb")
    label = Image.new("RGB", (140, 18), "white")
    ImageDraw.Draw(label).text((70, 9), "training loss", fill=INK, font=font, anchor="mm")
    image.paste(label.rotate(90, expand=True), (8, (y0 + y1) // 2 - 70))
    items = [("loss", RAW), (f"mean of {window} steps", MEAN)] if window > 1 else [("loss", MEAN)]
    _legend(draw, font, x1, y0, items)
    image.save(path, format="PNG")


def nice_ticks(lo: float, hi: float, count: int) -> list[float]:
    """About `count` evenly spaced round values (1, 2, 2.5 or 5 times a power of ten)
    from at or below `lo` to at or above `hi`."""
    if not hi > lo:
        lo, hi = lo - 0.5, hi + 0.5
    raw = (hi - lo) / max(count - 1, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw * (1 - 1e-9))
    first, last = math.floor(lo / step + 1e-9), math.ceil(hi / step - 1e-9)
    return [round(i * step, 12) for i in range(first, last + 1)]


def moving_average(values: Sequence[float], window: int) -> list[float]:
    """Mean of the finite values among the last `window` at each step (fewer at the
    start; NaN where there is none)."""
    sums, counts = [0.0], [0]  # prefix sums over the finite values
    for v in values:
        ok = math.isfinite(v)
        sums.append(sums[-1] + (v if ok else 0.0))
        counts.append(counts[-1] + ok)
    out = []
    for i in range(1, len(values) + 1):
        j = max(0, i - window)
        k = counts[i] - counts[j]
        out.append((sums[i] - sums[j]) / k if k else math.nan)
    return out


def _curve(draw, values: Sequence[float], px, py, colour, width: int, columns: int) -> None:
    """Connected points, broken where a value is not finite. Longer runs than the
    plot is wide are drawn as each pixel column's range, so spikes stay visible."""
    per = max(1, math.ceil(len(values) / columns))
    line: list[tuple[float, float]] = []
    for start in range(0, len(values), per):
        column = values[start : start + per]
        chunk = [v for v in column if math.isfinite(v)]
        if not chunk:
            if len(line) > 1:
                draw.line(line, fill=colour, width=width, joint="curve")
            line = []
            continue
        x = px(start + 1 + (len(column) - 1) / 2)
        if per > 1:
            draw.line([(x, py(min(chunk))), (x, py(max(chunk)))], fill=colour, width=width)
        line.append((x, py(sum(chunk) / len(chunk))))
    if len(line) > 1:
        draw.line(line, fill=colour, width=width, joint="curve")
    elif line:
        x, y = line[0]
        draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=colour)


def _legend(draw, font, right: float, top: float, items: list[tuple[str, tuple]]) -> None:
    width = max(draw.textlength(name, font=font) for name, _ in items) + 40
    x, y = right - width - 10, top + 10
    draw.rectangle([x, y, x + width, y + 8 + 18 * len(items)], fill="white", outline=GRID)
    for i, (name, colour) in enumerate(items):
        row = y + 13 + 18 * i
        draw.line([(x + 8, row), (x + 28, row)], fill=colour, width=2)
        draw.text((x + 34, row), name, fill=INK, font=font, anchor="lm")
