"""The stored augmentations: a pure function of (seed, key, k), inside the image."""

import pytest
from PIL import Image

from vecap_cli.stream.augment import RATIO, SCALE, Augmentation, augment, augmentation


def test_the_same_seed_key_and_k_give_the_same_crop_anywhere():
    first = augmentation(7, "000123", 3, (640, 480))
    assert augmentation(7, "000123", 3, (640, 480)) == first
    # every part of the triple matters
    others = {
        augmentation(8, "000123", 3, (640, 480)),
        augmentation(7, "000124", 3, (640, 480)),
        augmentation(7, "000123", 4, (640, 480)),
    }
    assert first not in others


@pytest.mark.parametrize("size", [(640, 480), (480, 640), (37, 23), (1, 1), (3000, 20), (20, 3000)])
def test_every_crop_lies_inside_the_image(size):
    width, height = size
    for k in range(200):
        a = augmentation(0, f"k{k}", k, size)
        assert 0 < a.width <= width and 0 < a.height <= height
        assert 0 <= a.left <= width - a.width and 0 <= a.top <= height - a.height


def test_crops_follow_random_resized_crop_ranges():
    # a square image: almost every draw succeeds at its first tries
    areas, ratios, flips = [], [], 0
    for k in range(2000):
        a = augmentation(1, "key", k, (1000, 1000))
        areas.append(a.width * a.height / 1e6)
        ratios.append(a.width / a.height)
        flips += a.flip
    assert SCALE[0] * 0.97 <= min(areas) and max(areas) <= SCALE[1]
    assert RATIO[0] * 0.97 <= min(ratios) and max(ratios) <= RATIO[1] * 1.03
    # the area is drawn uniformly in [0.08, 1] (the rejected draws trim the top a little)
    assert 0.45 < sum(areas) / len(areas) < 0.6
    assert 900 < flips < 1100


def test_an_extreme_aspect_falls_back_to_the_centre_crop():
    a = augmentation(0, "wide", 0, (3000, 20))
    assert (a.width, a.height) == (round(20 * RATIO[1]), 20)
    assert a.left == (3000 - a.width) // 2 and a.top == 0


def test_apply_crops_and_flips_the_pixels():
    image = Image.new("RGB", (8, 6))
    image.putdata([(x, y, 0) for y in range(6) for x in range(8)])
    out = Augmentation(left=2, top=1, width=3, height=4, flip=False).apply(image)
    assert out.size == (3, 4) and out.getpixel((0, 0)) == (2, 1, 0)
    flipped = Augmentation(left=2, top=1, width=3, height=4, flip=True).apply(image)
    assert flipped.getpixel((0, 0)) == (4, 1, 0) and flipped.getpixel((2, 3)) == (2, 4, 0)
    assert image.getpixel((0, 0)) == (0, 0, 0)  # the input is left as it was
    a = augmentation(5, "abc", 2, image.size)
    assert augment(image, 5, "abc", 2).tobytes() == a.apply(image).tobytes()


def test_the_area_draw_is_not_degenerate():
    # the crops of one record differ from each other
    boxes = {augmentation(0, "rec", k, (500, 400)) for k in range(16)}
    assert len(boxes) == 16
