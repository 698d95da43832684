"""A small pool of generated scenes with web-like AltTexts and clean captions.

    python make_pool.py OUT_DIR [--n 200] [--seed 0]

Writes OUT_DIR/pool.jsonl and OUT_DIR/images/KEY.png. The full mini world of
the demo grows from this (issue 8).
"""

import argparse
import random
from pathlib import Path

import orjson
from PIL import Image, ImageDraw

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 80, 220),
    "yellow": (230, 210, 40),
}
SHAPES = ("circle", "square", "triangle")
NOISE = (
    "IMG_{n}.jpg",
    "Buy now! Free shipping",
    "stock photo {n}",
    "",
    "{colour} {shape} sale 50% off",
)


def draw(shape: str, colour: tuple, rng: random.Random) -> Image.Image:
    image = Image.new("RGB", (64, 64), (245, 245, 240))
    pen = ImageDraw.Draw(image)
    x, y, r = rng.randint(16, 48), rng.randint(16, 48), rng.randint(8, 14)
    if shape == "circle":
        pen.ellipse((x - r, y - r, x + r, y + r), fill=colour)
    elif shape == "square":
        pen.rectangle((x - r, y - r, x + r, y + r), fill=colour)
    else:
        pen.polygon([(x, y - r), (x - r, y + r), (x + r, y + r)], fill=colour)
    return image


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    (args.out / "images").mkdir(parents=True, exist_ok=True)
    with open(args.out / "pool.jsonl", "wb") as f:
        for i in range(args.n):
            colour, shape = rng.choice(list(COLOURS)), rng.choice(SHAPES)
            key = f"{i:06d}"
            draw(shape, COLOURS[colour], rng).save(args.out / "images" / f"{key}.png")
            alt = rng.choice(NOISE).format(n=rng.randint(1000, 9999), colour=colour, shape=shape)
            record = {
                "key": key,
                "alt": alt,
                "image": f"images/{key}.png",
                "vecap": f"a {colour} {shape}",
            }
            f.write(orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE))


if __name__ == "__main__":
    main()
