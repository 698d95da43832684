"""A web-like pool from Flickr8k: real photos, AltTexts made as noisy as the web's.

    python make_pool.py FLICKR8K_DIR OUT [--pool 5091] [--seed-split 1000] [--test 1000]
        [--alts laion-alt-10k.jsonl] [--seed 0]

Flickr8k has five clean human captions per photo and no AltText. The split is
fixed by a hash of each file name: a held-out test split keeps all five captions
(retrieval), a seed split keeps them for the captioner, and the pool gets one
AltText per photo, written the way the web writes them: a fragment of a caption
("dog running through"), the fragment in shop or stock-photo boilerplate, the
photo's file name, a real web AltText about something else (from --alts, e.g.
LAION's), or, for one in ten, a whole caption.

Writes OUT/pool.jsonl (key, url, alt, image), OUT/seed.jsonl (key, image, text and
c0..c4, one caption each), OUT/test.jsonl (key, image, captions). Image paths are
absolute: the photos stay where they are.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import random
from pathlib import Path

BOILERPLATE = (
    "{} - Stock Photo",
    "{} | Free Shipping",
    "Photo of {} | Shutterstock",
    "{} Poster Print, 24x36",
    "Buy {} Canvas Art",
)
FILLER = ("Untitled", "image", "Click to enlarge", "photo gallery", "Summer vibes", "thumbnail")


def read_captions(path: Path) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            groups.setdefault(row["image"], []).append(" ".join(row["caption"].split()))
    return groups


def fragment(caption: str, rng: random.Random) -> str:
    words = caption.rstrip(" .").split()
    n = min(len(words), rng.randint(2, 4))
    start = rng.randint(0, len(words) - n)
    return " ".join(words[start : start + n])


def alt_text(name: str, captions: list[str], others: list[str], rng: random.Random) -> str:
    roll = rng.random()
    caption = rng.choice(captions)
    if roll < 0.35:
        return fragment(caption, rng)
    if roll < 0.55:
        return rng.choice(BOILERPLATE).format(fragment(caption, rng).title())
    if roll < 0.70:
        return name
    if roll < 0.90:
        return rng.choice(others) if others else rng.choice(FILLER)
    return caption


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("flickr8k", type=Path, help="folder with images/ and captions.csv")
    parser.add_argument("out", type=Path)
    parser.add_argument("--pool", type=int, default=None, help="pool photos (default: the rest)")
    parser.add_argument("--seed-split", type=int, default=1000)
    parser.add_argument("--test", type=int, default=1000)
    parser.add_argument("--alts", type=Path, help="JSONL of unrelated web AltTexts (`alt`)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    groups = read_captions(args.flickr8k / "captions.csv")
    images = (args.flickr8k / "images").resolve()
    names = sorted(
        (n for n in groups if (images / n).is_file()),
        key=lambda n: hashlib.blake2b(f"{args.seed}/{n}".encode(), digest_size=8).digest(),
    )
    test, seed = names[: args.test], names[args.test : args.test + args.seed_split]
    pool = names[args.test + args.seed_split :][: args.pool]
    others = []
    if args.alts and args.alts.is_file():
        others = [json.loads(line)["alt"] for line in args.alts.read_text().splitlines() if line]
    args.out.mkdir(parents=True, exist_ok=True)

    def write(name: str, records) -> None:
        with open(args.out / name, "w", encoding="utf-8") as f:
            for record in records:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")

    def pool_record(n: str) -> dict:
        rng = random.Random(f"{args.seed}/{n}")
        alt = alt_text(n, groups[n], others, rng)
        url = f"https://farm.example.com/{n}"
        return {"key": Path(n).stem, "url": url, "alt": alt, "image": str(images / n)}

    def seed_record(n: str) -> dict:
        caps = {f"c{i}": c for i, c in enumerate(groups[n][:5])}
        return {"key": Path(n).stem, "image": str(images / n), "text": groups[n][0], **caps}

    write("pool.jsonl", map(pool_record, pool))
    write("seed.jsonl", map(seed_record, seed))
    write("test.jsonl", ({"key": Path(n).stem, "image": str(images / n), "captions": groups[n]}
                         for n in test))  # fmt: skip
    print(f"flickr8k: {len(pool):,} pool, {len(seed):,} seed, {len(test):,} test in {args.out}/")


if __name__ == "__main__":
    main()
