"""`vecap rewrite` with the model-free `rules` backend, on one core (issue 7, goal >= 20k rec/s).

Input: --records JSONL records with real web AltTexts (../shared/data/laion-alt-10k.jsonl,
repeated; generated shop-style ones when absent) and a VeC each. Rows:

- `vecap rewrite` as a user runs it (a process pinned to one core: start,
  read, clean + fuse, write), beside a bare orjson loop that only reads and
  writes the same records: the floor any record command stands on;
- the rules stage alone, in this process (no I/O), for where the time goes.

Each is timed best of --repeat.
"""

import argparse
import gc
import os
import platform
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

import orjson

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
WORK = Path(__file__).parent / "_work"
LAION = REPO.parent / "shared" / "data" / "laion-alt-10k.jsonl"
VECS = [
    "a dog sitting on the grass in a park",
    "a red car parked on a street",
    "a plate of food on a wooden table",
    "a woman in a dress standing in front of a wall",
]


def alts() -> list[str]:
    if LAION.exists():
        return [orjson.loads(line)["alt"] for line in LAION.read_bytes().splitlines()]
    rng = random.Random(0)
    words = ["Nike", "Air", "Max", "90", "Red", "Leather", "Bag", "Paris", "2019", "shoes"]
    tails = [" | Free Shipping", " - Stock Photo", " <br>", " SKU: B07XJ8C8F3", " IMG_0042.jpg", ""]
    return [" ".join(rng.choices(words, k=6)) + rng.choice(tails) for _ in range(10_000)]


def make_pool(path: Path, n: int) -> None:
    texts = alts()
    with open(path, "wb") as f:
        for i in range(n):
            record = {"key": f"{i:08d}", "url": f"http://x/{i}.jpg", "alt": texts[i % len(texts)]}
            record["vec"] = VECS[i % len(VECS)]
            f.write(orjson.dumps(record) + b"\n")


def one_core() -> None:
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})


def bare(src: Path, dst: Path) -> None:
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        for line in fin:
            record = orjson.loads(line)
            record["vecap"] = record["vec"]
            fout.write(orjson.dumps(record) + b"\n")


def cli(src: Path, dst: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "vecap_cli", "rewrite", str(src), "-q", "-o", str(dst)],
        check=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        preexec_fn=one_core,
    )


def stage_only(src: Path):
    from vecap_cli.steps.rewrite import RewriteConfig, rewrite
    from vecap_cli.steps.rewrite.build import build_rewriter
    from vecap_cli.stream.sample import Sample
    from vecap_cli.stream.tally import Tally

    records = [orjson.loads(line) for line in src.read_bytes().splitlines()]
    gc.freeze()  # a million live dicts would otherwise make every GC pass walk them all
    config = RewriteConfig(batch_size=512)
    rewriter = build_rewriter(config)

    def run():
        samples = [Sample(dict(r), idx=i) for i, r in enumerate(records)]
        for _ in rewrite(samples, Tally("rewrite"), config, rewriter):
            pass

    return run


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def child_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    WORK.mkdir(exist_ok=True)
    src = WORK / f"rewrite-{args.records}.jsonl"
    if not src.exists():
        make_pool(src, args.records)
    one_core()
    n = args.records

    t_bare = best(lambda: bare(src, WORK / "bare.jsonl"), args.repeat)
    cpu_before = child_cpu()
    t_cli = best(lambda: cli(src, WORK / "vecap.jsonl"), args.repeat)
    cpu_cli = (child_cpu() - cpu_before) / args.repeat  # mean CPU seconds of one run
    t_stage = best(stage_only(src), args.repeat)

    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores (pinned to one), "
        f"Python {platform.python_version()}"
    )
    print(
        f"input: {n:,} records, AltTexts from "
        f"{'laion-alt-10k (repeated)' if LAION.exists() else 'a generator'}, a VeC each"
    )
    print("| case | records | bare read/write rec/s | vecap rec/s | ratio | goal |")
    print("|---|---:|---:|---:|---:|---:|")
    print(
        f"| rewrite --backend rules, JSONL -> JSONL | {n:,} | {n / t_bare:,.0f} | "
        f"{n / t_cli:,.0f} | {t_bare / t_cli:.2f} | >= 20,000 rec/s |"
    )
    print(f"| rules stage alone (no I/O) | {n:,} | | {n / t_stage:,.0f} | | |")
    print(
        f"\nvecap times include its process start (~0.4 s). Per CPU second (what a loaded "
        f"machine does not distort as much): {n / cpu_cli:,.0f} rec/s."
    )


if __name__ == "__main__":
    main()
