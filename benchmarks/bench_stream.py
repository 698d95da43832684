"""Stream core throughput (issue 2), beside the bare loops it wraps, in one run.

1. `vecap mix --policy first` over 1M small JSONL records vs a bare orjson
   read-and-write loop over the same file (goal: >= 0.5x).
2. tar -> tar (`vecap mix` over webdataset shards with images) vs a bare
   webdataset read/write loop over the same shards (goal: >= 0.8x).

Both sides write to a file on the same disk; each is timed best of --repeat.
"""

import argparse
import io
import os
import platform
import random
import subprocess
import sys
import time
from pathlib import Path

import orjson

WORK = Path(__file__).parent / "_work"


def make_jsonl(path: Path, n: int) -> None:
    rng = random.Random(0)
    words = [
        "a",
        "red",
        "cube",
        "on",
        "the",
        "table",
        "photo",
        "of",
        "dog",
        "in",
        "Paris",
        "with",
        "blue",
        "sky",
    ]
    with open(path, "wb") as f:
        for i in range(n):
            rec = {
                "key": f"{i:08d}",
                "url": f"http://example.com/{i}.jpg",
                "alt": " ".join(rng.choices(words, k=8)),
            }
            if i % 3:
                rec["vecap"] = " ".join(rng.choices(words, k=12))
            f.write(orjson.dumps(rec) + b"\n")


def make_tars(directory: Path, n_shards: int, per_shard: int) -> list[Path]:
    import webdataset as wds
    from PIL import Image

    directory.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    buf = io.BytesIO()
    Image.frombytes("RGB", (32, 32), rng.randbytes(32 * 32 * 3)).save(buf, format="JPEG")
    jpg = buf.getvalue()
    paths = []
    for s in range(n_shards):
        path = directory / f"{s:04d}.tar"
        with wds.TarWriter(str(path)) as sink:
            for i in range(per_shard):
                key = f"{s:04d}{i:06d}"
                sink.write(
                    {
                        "__key__": key,
                        "jpg": jpg,
                        "txt": f"alt text {key}",
                        "json": {"url": f"http://x/{key}"},
                    }
                )
        paths.append(path)
    return paths


def bare_orjson(src: Path, dst: Path) -> None:
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        for line in fin:
            rec = orjson.loads(line)
            rec["text"] = rec.get("alt")
            fout.write(orjson.dumps(rec) + b"\n")


def bare_webdataset(srcs: list[Path], dst: Path) -> None:
    import webdataset as wds

    dataset = wds.WebDataset([str(p) for p in srcs], shardshuffle=False)
    with wds.TarWriter(str(dst)) as sink:
        for sample in dataset:
            sink.write(
                {k: v for k, v in sample.items() if not k.startswith("__") or k == "__key__"}
            )


def vecap(*args) -> None:
    subprocess.run(
        [sys.executable, "-m", "vecap_cli", "mix", "-q", "--policy", "first", *map(str, args)],
        check=True,
    )


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--shards", type=int, default=10)
    parser.add_argument("--per-shard", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    WORK.mkdir(exist_ok=True)

    src = WORK / f"pool-{args.records}.jsonl"
    if not src.exists():
        make_jsonl(src, args.records)
    tars = sorted((WORK / "tars").glob("*.tar"))
    if len(tars) != args.shards:
        tars = make_tars(WORK / "tars", args.shards, args.per_shard)
    n_tar = args.shards * args.per_shard

    rows = []
    t_bare = best(lambda: bare_orjson(src, WORK / "bare.jsonl"), args.repeat)
    t_vecap = best(lambda: vecap(src, "-o", WORK / "vecap.jsonl"), args.repeat)
    rows.append(("JSONL -> JSONL, mix --policy first", args.records, t_bare, t_vecap, 0.5))
    t_bare = best(lambda: bare_webdataset(tars, WORK / "bare.tar"), args.repeat)
    t_vecap = best(lambda: vecap(*tars, "-o", WORK / "vecap.tar"), args.repeat)
    rows.append(("tar -> tar, mix --policy first", n_tar, t_bare, t_vecap, 0.8))

    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    )
    print("| case | records | bare loop rec/s | vecap rec/s | ratio | goal |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, n, tb, tv, goal in rows:
        print(f"| {name} | {n:,} | {n / tb:,.0f} | {n / tv:,.0f} | {tb / tv:.2f} | >= {goal} |")
    print("\nvecap times include its process start (~0.35 s); the bare loops run in this process.")


if __name__ == "__main__":
    main()
