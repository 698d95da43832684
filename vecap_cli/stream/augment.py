"""The stored augmentations of reinforced training (MobileCLIP's DataCompDR).

`vecap embed` stores a teacher's embedding of each image under K augmentations,
and `vecap train --distill` must apply the very augmentation whose embedding it
reads. So augmentation k of a record is a pure function of (seed, key, k): its
parameters come from `vecap_cli.rand`, not from torch's generator, whose stream
may change between torch versions and machines; training reproduces it from
the seed alone, nothing about the crop is stored.

An augmentation is torchvision's RandomResizedCrop draw (area scale in
[0.08, 1], log-uniform aspect ratio in [3/4, 4/3], ten tries, then the centre
crop of the closest allowed ratio) and a horizontal flip with probability 1/2.
`apply` crops (and flips) the PIL image; resizing to a model's input is left to
that model's own preprocessing, so a teacher and a student of different sizes
see the same region.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from vecap_cli.rand import uniform

SCALE = (0.08, 1.0)
RATIO = (3 / 4, 4 / 3)
TRIES = 10


@dataclass(frozen=True, slots=True)
class Augmentation:
    """A crop box (left, top, width, height) in pixels of a `size` image, and a flip."""

    left: int
    top: int
    width: int
    height: int
    flip: bool

    def apply(self, image):
        """The augmented PIL image (a new one; `image` is left as it was)."""
        box = (self.left, self.top, self.left + self.width, self.top + self.height)
        out = image.crop(box)
        if self.flip:
            from PIL import Image

            out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return out


def augmentation(seed: int, key: str, k: int, size: tuple[int, int]) -> Augmentation:
    """Augmentation `k` of record `key` for an image of `size` = (width, height)."""
    width, height = size
    area = width * height
    log_ratio = (math.log(RATIO[0]), math.log(RATIO[1]))
    flip = uniform(seed, "augment", key, k, "flip") < 0.5
    for attempt in range(TRIES):
        draw = (seed, "augment", key, k, attempt)
        target = area * (SCALE[0] + (SCALE[1] - SCALE[0]) * uniform(*draw, "scale"))
        ratio = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * uniform(*draw, "ratio"))
        w = round(math.sqrt(target * ratio))
        h = round(math.sqrt(target / ratio))
        if 0 < w <= width and 0 < h <= height:
            top = int(uniform(*draw, "top") * (height - h + 1))
            left = int(uniform(*draw, "left") * (width - w + 1))
            return Augmentation(left, top, w, h, flip)
    # the centre crop, as torchvision falls back to
    in_ratio = width / height
    if in_ratio < RATIO[0]:
        w, h = width, round(width / RATIO[0])
    elif in_ratio > RATIO[1]:
        w, h = round(height * RATIO[1]), height
    else:
        w, h = width, height
    return Augmentation((width - w) // 2, (height - h) // 2, w, h, flip)


def augment(image, seed: int, key: str, k: int):
    """`image` (PIL) under augmentation `k` of record `key`."""
    return augmentation(seed, key, k, image.size).apply(image)
