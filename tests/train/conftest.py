"""A small learnable image-caption set: colored shapes at a position, said in words."""

import random
from pathlib import Path

import orjson
import pytest

COLORS = {
    "red": (220, 30, 30),
    "green": (30, 190, 30),
    "blue": (30, 30, 220),
    "yellow": (230, 220, 30),
    "black": (10, 10, 10),
    "purple": (150, 30, 170),
}
SHAPES = ("square", "circle")
PLACES = {"left": (0, 6), "right": (14, 6), "top": (6, 0), "bottom": (6, 14)}


def shapes_records(directory: Path, n: int, seed: int = 0, size: int = 32) -> list[dict]:
    """`n` records with PNGs in directory/img: 'a red circle on the left' and the like."""
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    (directory / "img").mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(n):
        color, shape, place = rng.choice(list(COLORS)), rng.choice(SHAPES), rng.choice(list(PLACES))
        image = Image.new("RGB", (size, size), (255, 255, 255))
        x, y = PLACES[place]
        box = (x + rng.randint(0, 2), y + rng.randint(0, 2), x + 16, y + 16)
        draw = ImageDraw.Draw(image)
        (draw.rectangle if shape == "square" else draw.ellipse)(box, fill=COLORS[color])
        key = f"s{seed}-{i:05d}"
        image.save(directory / "img" / f"{key}.png")
        records.append(
            {
                "key": key,
                "alt": f"a {color} {shape} on the {place}",
                "vecap": f"a photo of a {color} {shape} placed {place}",
                "image": f"img/{key}.png",
            }
        )
    return records


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(r, option=orjson.OPT_APPEND_NEWLINE) for r in records))
    return path


@pytest.fixture(scope="session")
def shapes(tmp_path_factory) -> Path:
    """512 training records (JSONL) beside a held-out 128 in val.jsonl."""
    directory = tmp_path_factory.mktemp("shapes")
    write_jsonl(directory / "val.jsonl", shapes_records(directory, 128, seed=99))
    return write_jsonl(directory / "train.jsonl", shapes_records(directory, 512, seed=0))
