"""The mini world: small scenes of objects, with AltTexts as noisy as the web's.

    python world.py OUT [--pool 4000] [--seed-split 1000] [--test 600] [--seed 0]

Each 64×64 scene holds one to three objects of one kind on a plain background:
a colour, a shape, a size, a count, and (for a lone object) a position. Every
scene has a clean description of what is visible,

    "two small red circles, grey background"
    "a large blue star on the left, white background"

but the pool only carries its AltText, written the way web AltTexts are: a shop
title with a brand the picture cannot show ("Zorblax Red Circle Sticker - Free
Shipping"), a partial mention ("red ones"), a camera file name, text about
something else. Clean descriptions exist only for the seed split (what the
captioner learns from) and the held-out test split (what the CLIPs are scored
on). Everything derives from --seed and each scene's key.

Writes, under OUT (image paths are relative to the JSONL files):

    images/KEY.png          the scenes
    pool.jsonl              key, url, alt, image            the web pool
    seed.jsonl              key, image, text                the captioner's clean split
    test.jsonl              key, image, captions (2)        held out: retrieval
    test-shape.jsonl        key, image, cls                 held out: zero-shot shape
    test-colour.jsonl       key, image, cls                 held out: zero-shot colour
    shapes.txt, colours.txt class names in class-index order
    shape-prompts.json,     zero-shot prompts per class name ("a red circle", ...)
    colour-prompts.json
    vocab.txt               the world's words and names: curation metadata titles
    truth.jsonl             the pool's scenes (for inspection only, never trained on)
    world.json              the split sizes and seed (written last)
"""

from __future__ import annotations

import argparse
import math
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import orjson
from PIL import Image, ImageDraw

SIZE = 64  # pixels of a saved scene
SS = 4  # supersampling: drawn at SIZE·SS, then downsampled (smooth edges)

COLOURS = {
    "red": (215, 35, 35),
    "orange": (245, 135, 20),
    "yellow": (240, 220, 40),
    "green": (40, 165, 55),
    "blue": (35, 70, 215),
    "purple": (130, 45, 180),
    "pink": (245, 130, 195),
    "brown": (125, 80, 35),
}
BACKGROUNDS = {"white": (245, 245, 242), "black": (18, 18, 22), "grey": (128, 128, 128)}
SHAPES = ("circle", "square", "triangle", "star", "cross")
PLURAL = {"cross": "crosses"}
SIZES = {"small": 8.0, "large": 13.0}  # radius in pixels of a SIZE scene
COUNTS = {1: "a", 2: "two", 3: "three"}
POSITIONS = {  # a lone object's centre region: (x, y) in [0, 1]
    "on the left": (0.25, 0.5),
    "on the right": (0.75, 0.5),
    "at the top": (0.5, 0.25),
    "at the bottom": (0.5, 0.75),
    "in the middle": (0.5, 0.5),
}

BRANDS = (
    *("Zorblax", "Quintessa", "Hovimo", "Brellix", "Ostrava", "Kelvane", "Mirabuk"),
    *("Tandrel", "Vossen", "Ulmora", "Pexalit", "Grunwick", "Sabrio", "Felmont"),
    *("Drizzle", "Caspian", "Nortek", "Ambrosi", "Lumina", "Tarvik"),
)
PRODUCTS = ("Sticker", "Decal", "Magnet", "Patch", "Badge", "Pin", "Print", "Coaster")
BOILERPLATE = (
    "Free Shipping",
    "Buy Now",
    "50% OFF",
    "Hot Sale",
    "In Stock",
    "Best Price",
    "Add to Cart",
    "New Arrival",
    "Wholesale",
    "Shop Now",
)
UNRELATED = (
    "Summer vibes",
    "Happy birthday to my best friend",
    "Click to enlarge",
    "Untitled",
    "thumbnail",
    "logo",
    "Posted by admin",
    "We ship worldwide",
    "view from our hotel room",
    "my weekend project",
    "Terms and conditions apply",
    "Welcome to our store",
    "photo gallery",
    "see more like this",
    "Subscribe to our newsletter",
    "banner",
    "Contact us today",
    "featured",
    "Best friends forever",
    "Monday mood",
)
# What each AltText kind is, and how often the pool has it.
ALT_KINDS = (
    ("product", 0.30),  # shop title: brand, some attributes, boilerplate, codes
    ("partial", 0.25),  # a few true words about the picture
    ("filename", 0.15),  # a camera or upload file name
    ("unrelated", 0.20),  # text about something else
    ("described", 0.10),  # a decent human description (never complete)
)


@dataclass(frozen=True)
class Scene:
    colour: str
    shape: str
    size: str
    count: int
    position: str  # "" for groups: they spread over the whole scene
    background: str


def plural(shape: str, count: int) -> str:
    return shape if count == 1 else PLURAL.get(shape, shape + "s")


def describe(s: Scene, form: int = 0) -> str:
    """The clean description of what is visible (form 1: a second wording)."""
    what = f"{COUNTS[s.count]} {s.size} {s.colour} {plural(s.shape, s.count)}"
    where = f" {s.position}" if s.position else ""
    if form == 0:
        return f"{what}{where}, {s.background} background"
    return f"{s.background} background with {what}{where}"


# -- scenes ---------------------------------------------------------------------


def draw_scene(s: Scene, rng: random.Random) -> Image.Image:
    big = SIZE * SS
    shade = rng.randint(-10, 10)  # lighter or darker, not tinted
    bg = tuple(max(0, min(255, c + shade)) for c in BACKGROUNDS[s.background])
    image = Image.new("RGB", (big, big), bg)
    pen = ImageDraw.Draw(image)
    r = SIZES[s.size] * rng.uniform(0.9, 1.1) * SS
    for x, y in _centres(s, r, rng):
        _shape(pen, s.shape, x, y, r, _jitter(COLOURS[s.colour], rng, 18))
    return image.resize((SIZE, SIZE), Image.Resampling.LANCZOS)


def _jitter(rgb: tuple, rng: random.Random, amount: int) -> tuple:
    return tuple(max(0, min(255, c + rng.randint(-amount, amount))) for c in rgb)


def _centres(s: Scene, r: float, rng: random.Random) -> list[tuple[float, float]]:
    big = SIZE * SS
    if s.count == 1:
        fx, fy = POSITIONS[s.position]
        wobble = 0.06 * big
        return [(fx * big + rng.uniform(-wobble, wobble), fy * big + rng.uniform(-wobble, wobble))]
    margin = r + 2 * SS
    for _ in range(200):  # rejection sampling: objects apart, inside the frame
        pts = [(rng.uniform(margin, big - margin), rng.uniform(margin, big - margin))]
        while len(pts) < s.count:
            p = (rng.uniform(margin, big - margin), rng.uniform(margin, big - margin))
            if all((p[0] - q[0]) ** 2 + (p[1] - q[1]) ** 2 > (2.3 * r) ** 2 for q in pts):
                pts.append(p)
            elif len(pts) and rng.random() < 0.02:
                break
        if len(pts) == s.count:
            return pts
    raise RuntimeError(f"no room for {s}")  # SIZES and COUNTS make this unreachable


def _shape(pen: ImageDraw.ImageDraw, shape: str, x: float, y: float, r: float, fill) -> None:
    if shape == "circle":
        pen.ellipse((x - r, y - r, x + r, y + r), fill=fill)
    elif shape == "square":
        h = r * 0.85
        pen.rectangle((x - h, y - h, x + h, y + h), fill=fill)
    elif shape == "triangle":
        pen.polygon(
            [(x, y - r), (x - r * 0.95, y + r * 0.8), (x + r * 0.95, y + r * 0.8)], fill=fill
        )
    elif shape == "star":
        pts = []
        for i in range(10):  # five points, five inner corners
            a = -math.pi / 2 + i * math.pi / 5
            rad = r if i % 2 == 0 else r * 0.42
            pts.append((x + rad * math.cos(a), y + rad * math.sin(a)))
        pen.polygon(pts, fill=fill)
    else:  # cross
        w = r * 0.36
        pen.rectangle((x - r, y - w, x + r, y + w), fill=fill)
        pen.rectangle((x - w, y - r, x + w, y + r), fill=fill)


# -- AltTexts -------------------------------------------------------------------


def zipf(rng: random.Random, items: tuple, s: float = 1.1):
    """A few items are everywhere, most are rare: web shops and their boilerplate."""
    weights = [1 / (i + 1) ** s for i in range(len(items))]
    return rng.choices(items, weights)[0]


def _title(word: str) -> str:
    return word[:1].upper() + word[1:]


def alt_text(s: Scene, rng: random.Random) -> tuple[str, str]:
    """(kind, AltText) for a pool scene."""
    kind = rng.choices([k for k, _ in ALT_KINDS], [p for _, p in ALT_KINDS])[0]
    colour = s.colour
    if rng.random() < 0.1:  # web text is sometimes plain wrong
        colour = rng.choice([c for c in COLOURS if c != s.colour])
    shapes = plural(s.shape, s.count)
    n = rng.randint(100, 99999)
    if kind == "product":
        words = []
        if rng.random() < 0.85:
            words.append(zipf(rng, BRANDS))
        if s.count > 1 and rng.random() < 0.4:
            words.append(rng.choice((f"Set of {s.count}", f"{s.count} pcs", f"{s.count}-Pack")))
        if rng.random() < 0.2:
            words.append({"small": rng.choice(("Small", "Mini")), "large": "Large"}[s.size])
        if rng.random() < 0.6:
            words.append(_title(colour))
        if rng.random() < 0.7:
            words.append(_title(s.shape))
        words.append(rng.choice(PRODUCTS))
        text = " ".join(words)
        n_extra = rng.choice((0, 1, 1, 2))
        for extra in dict.fromkeys(zipf(rng, BOILERPLATE) for _ in range(n_extra)):  # distinct
            text += rng.choice((" - ", " | ", ", ")) + extra
        if rng.random() < 0.3:
            text += f" SKU: {n}"
        return kind, text
    if kind == "partial":
        return kind, rng.choice(
            (
                colour,
                shapes,
                f"{colour} {shapes}",
                f"{colour} ones",
                f"some {shapes}" if s.count > 1 else f"a {s.shape}",
                f"love this {colour}!",
                f"{shapes} again",
                f"my {colour} collection",
            )
        )
    if kind == "filename":
        return kind, rng.choice(
            (
                f"IMG_{n:05d}.jpg",
                f"DSC{n:05d}.JPG",
                f"upload-{n}.png",
                f"{zipf(rng, BRANDS).lower()}_{s.shape}_{n}.png",
                f"image{n}.jpeg",
            )
        )
    if kind == "unrelated":
        text = zipf(rng, UNRELATED, 0.8)
        return kind, text + (f" | {zipf(rng, BRANDS)}" if rng.random() < 0.3 else "")
    # described: true, but never everything the picture shows
    parts = [COUNTS[s.count] if s.count > 1 else "a", colour, shapes]
    if rng.random() < 0.3:
        parts.insert(1, s.size)
    text = " ".join(parts)
    if rng.random() < 0.3:
        text += f" on {s.background}"
    elif s.position and rng.random() < 0.3:
        text += f" {s.position}"
    return kind, text


def vocabulary() -> list[str]:
    """The world's words and names, as web text writes them: curation's metadata titles."""
    words = []
    for c in COLOURS:
        words += [c, _title(c)]
    for sh in SHAPES:
        words += [sh, _title(sh), plural(sh, 2)]
    words += [*SIZES, "Small", "Mini", "Large", *BACKGROUNDS, "background"]
    words += ["left", "right", "top", "bottom", "middle", "two", "three", "pcs", "Set"]
    words += list(BRANDS) + list(PRODUCTS) + list(BOILERPLATE) + ["SKU"]
    return words


# -- splits ---------------------------------------------------------------------


def sample_scene(rng: random.Random) -> Scene:
    count = rng.choices((1, 2, 3), (0.5, 0.3, 0.2))[0]
    size = rng.choice(tuple(SIZES)) if count < 3 else "small"  # three large ones do not fit
    return Scene(
        colour=rng.choice(tuple(COLOURS)),
        shape=rng.choice(SHAPES),
        size=size,
        count=count,
        position=rng.choice(tuple(POSITIONS)) if count == 1 else "",
        background=rng.choice(tuple(BACKGROUNDS)),
    )


def write_jsonl(path: Path, records: list[dict]) -> None:
    path.write_bytes(b"".join(orjson.dumps(r, option=orjson.OPT_APPEND_NEWLINE) for r in records))


def build(out: Path, n_pool: int, n_seed: int, n_test: int, seed: int) -> dict[str, int]:
    (out / "images").mkdir(parents=True, exist_ok=True)
    splits: dict[str, list[dict]] = {"pool": [], "seed": [], "test": [], "truth": []}
    shape_cls, colour_cls = [], []
    for split, n in (("pool", n_pool), ("seed", n_seed), ("test", n_test)):
        for i in range(n):
            key = f"{split}-{i:06d}"
            rng = random.Random(f"{seed}/{key}")  # str seeds are stable across runs and machines
            scene = sample_scene(rng)
            image = f"images/{key}.png"
            draw_scene(scene, rng).save(out / image, optimize=False, compress_level=1)
            if split == "pool":
                kind, alt = alt_text(scene, rng)
                url = f"https://cdn.example.com/{n_pool + i * 7919 % 100003}/{key}.png"
                splits["pool"].append({"key": key, "url": url, "alt": alt, "image": image})
                splits["truth"].append({"key": key, "kind": kind, **asdict(scene)})
            elif split == "seed":
                splits["seed"].append({"key": key, "image": image, "text": describe(scene)})
            else:
                captions = [describe(scene, 0), describe(scene, 1)]
                splits["test"].append({"key": key, "image": image, "captions": captions})
                shape_cls.append({"key": key, "image": image, "cls": SHAPES.index(scene.shape)})
                colour_cls.append(
                    {"key": key, "image": image, "cls": list(COLOURS).index(scene.colour)}
                )
    for name, records in splits.items():
        write_jsonl(out / f"{name}.jsonl", records)
    write_jsonl(out / "test-shape.jsonl", shape_cls)
    write_jsonl(out / "test-colour.jsonl", colour_cls)
    (out / "shapes.txt").write_text("\n".join(SHAPES) + "\n")
    (out / "colours.txt").write_text("\n".join(COLOURS) + "\n")
    (out / "shape-prompts.json").write_bytes(orjson.dumps(prompts("shape")))
    (out / "colour-prompts.json").write_bytes(orjson.dumps(prompts("colour")))
    (out / "vocab.txt").write_text("\n".join(vocabulary()) + "\n")
    sizes = {name: len(records) for name, records in splits.items() if name != "truth"}
    (out / "world.json").write_bytes(orjson.dumps({"seed": seed, **sizes}))  # last: the stamp
    return sizes


def prompts(task: str) -> dict[str, list[str]]:
    """Zero-shot prompts per class: the class named with every value of the other attribute
    ("a red circle", "a red square", ...), averaged as CLIP averages its templates."""
    if task == "shape":
        return {sh: [f"a {c} {sh}" for c in COLOURS] for sh in SHAPES}
    return {c: [f"a {c} {sh}" for sh in SHAPES] for c in COLOURS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--pool", type=int, default=4000, help="web pool scenes")
    parser.add_argument("--seed-split", type=int, default=1000, help="clean captioner scenes")
    parser.add_argument("--test", type=int, default=600, help="held-out scenes")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    sizes = build(args.out, args.pool, args.seed_split, args.test, args.seed)
    print(
        "world: " + ", ".join(f"{n:,} {name}" for name, n in sizes.items()) + f" in {args.out}/",
    )


if __name__ == "__main__":
    main()
