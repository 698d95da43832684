"""Learning rate: linear warmup, then cosine decay to zero (open_clip's `cosine_lr`).

A pure function of the step, so resuming needs nothing but the step.
"""

import math


def cosine_lr(step: int, base_lr: float, warmup: int, total: int) -> float:
    if step < warmup:
        return base_lr * (step + 1) / warmup
    span = total - warmup
    if span <= 0:
        return base_lr
    progress = min(1.0, (step - warmup) / span)
    return 0.5 * (1 + math.cos(math.pi * progress)) * base_lr
