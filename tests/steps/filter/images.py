"""Images to deduplicate: photos (Flickr8k when at hand, else generated) and their
near copies (re-encoded, resized, cropped a few pixels)."""

import io
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import SHARED_DATA

FLICKR8K = SHARED_DATA / "flickr8k" / "images"


def generated(n: int, size: int = 128, seed: int = 0) -> list:
    """`n` smooth random RGB images, photo-like enough for a pHash (random pixels
    are all high frequencies; an 8x8 field upsampled is not)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    return [
        Image.fromarray((rng.random((8, 8, 3)) * 255).astype(np.uint8)).resize(
            (size, size), Image.BICUBIC
        )
        for _ in range(n)
    ]


def flickr(n: int) -> list:
    """The first `n` Flickr8k photos (RGB), or a skip when the data is absent."""
    from PIL import Image

    if not FLICKR8K.is_dir():
        pytest.skip("../shared/data/flickr8k is absent")
    paths = sorted(FLICKR8K.glob("*.jpg"))[:n]
    return [Image.open(p).convert("RGB") for p in paths]


def encoded(image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()


def near_copies(image) -> dict[str, bytes]:
    """The encodings a web pool holds of one photo: re-encoded, resized, cropped."""
    w, h = image.size
    return {
        "jpeg": encoded(image, "JPEG", quality=90),
        "resized": encoded(image.resize((w * 3 // 4, h * 3 // 4))),
        "cropped": encoded(image.crop((3, 3, w - 3, h - 3))),
    }


def write_pool(folder: Path, images: dict[str, bytes]) -> Path:
    """A JSONL pool, a record per image (key: its name), the images beside it."""
    import orjson

    lines = []
    for key, data in images.items():
        name = f"{key}.jpg" if data[:2] == b"\xff\xd8" else f"{key}.png"
        (folder / name).write_bytes(data)
        lines.append(orjson.dumps({"key": key, "image": name}))
    path = folder / "pool.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path
