"""--workers (issue 16): `vecap curate` and `vecap mix` over worker processes on the
cores this machine has, beside the loops they are measured against, in one run.

1. curate: 1M LAION AltTexts (../shared/data/laion-alt-10k.jsonl repeated, keys
   made unique) against ~150k WordNet entries, as in bench_curate.py.
   `vecap curate POOL -o out.jsonl` end to end (process start, metadata load,
   automaton build) with --workers 1 and 2, vs the bare pyahocorasick loop on
   one core in this process. Goal: --workers 2 >= 0.8x the bare loop, which is
   >= 1.6x --workers 1.
2. mix: 1M small JSONL records, as in bench_stream.py. `vecap mix --policy first`
   with --workers 1 and 2 vs the bare orjson read-and-write loop. Goal: >= 0.9x.

Runs alternate (the machine may be shared) and each row is the best of --repeat
(wall time: the workers' point; CPU time, all processes, beside it), with the
ratio of the medians beside the ratio of the bests. The outputs of 1 and 2
workers are compared byte for byte.
"""

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import orjson

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_curate  # noqa: E402  (a sibling script: its pool, metadata and bare loop)
import bench_stream  # noqa: E402


def curate_inputs(records: int, entries: int) -> tuple[Path, list[str], Path]:
    """The pool (and its texts, as vecap reads them) and the metadata, made once."""
    bench_curate.WORK.mkdir(parents=True, exist_ok=True)
    pool = bench_curate.WORK / f"pool-{records}.jsonl"
    if pool.exists():
        texts = [orjson.loads(line)["alt"] for line in pool.read_bytes().splitlines()]
    else:
        pool, texts = bench_curate.make_pool(records)
    metadata = bench_curate.WORK / f"metadata-{entries}.json"
    if not metadata.exists():
        metadata = bench_curate.make_metadata(entries)
    return pool, texts, metadata


def mix_input(records: int) -> Path:
    bench_stream.WORK.mkdir(exist_ok=True)
    pool = bench_stream.WORK / f"pool-{records}.jsonl"
    if not pool.exists():
        bench_stream.make_jsonl(pool, records)
    return pool


def vecap(*args) -> tuple[float, float]:
    """(wall s, CPU s of vecap and its workers) of one command."""
    wall, cpu, _ = bench_curate.run_timed([sys.executable, "-m", "vecap_cli", *map(str, args)])
    return wall, cpu


def timed(fn) -> tuple[float, float]:
    start, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - start, time.process_time() - cpu


def best(runs: list[tuple[float, float]]) -> tuple[float, float]:
    return min(w for w, _ in runs), min(c for _, c in runs)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--entries", type=int, default=150_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    n, w = args.records, args.workers
    load = os.getloadavg()[0]
    pool, texts, metadata = curate_inputs(n, args.entries)
    entries = orjson.loads(metadata.read_bytes())
    small = mix_input(n)
    out = bench_curate.WORK

    runs: dict[str, list[tuple[float, float]]] = {
        k: [] for k in ("ac", "curate 1", f"curate {w}", "orjson", "mix 1", f"mix {w}")
    }
    curate = ["curate", pool, "--metadata", metadata, "-q"]
    mix = ["mix", small, "-q", "--policy", "first"]
    for _ in range(args.repeat):
        for workers in (1, w):
            written = out / f"workers-{workers}.jsonl"
            runs[f"curate {workers}"].append(vecap(*curate, "--workers", workers, "-o", written))
        runs["ac"].append(bench_curate.bare_loop(texts, entries))
        for workers in (1, w):
            written = out / f"mix-{workers}.jsonl"
            runs[f"mix {workers}"].append(vecap(*mix, "--workers", workers, "-o", written))
        runs["orjson"].append(timed(lambda: bench_stream.bare_orjson(small, out / "bare.jsonl")))
    same = all(
        (out / f"{step}-1.jsonl").read_bytes() == (out / f"{step}-{w}.jsonl").read_bytes()
        for step in ("workers", "mix")
    )
    top = {name: best(r) for name, r in runs.items()}
    mid = {name: statistics.median(w for w, _ in r) for name, r in runs.items()}

    print(
        f"machine: {platform.machine()}, {len(os.sched_getaffinity(0))} usable cores, Python "
        f"{platform.python_version()}; load before: {load:.2f}; {n:,} records; curate "
        f"metadata {len(entries):,} entries; 1 and {w} workers write the same bytes: "
        f"{'yes' if same else 'NO'}; load after: {os.getloadavg()[0]:.2f}"
    )
    print("| case | records/s (wall) | vs | ratio | median ratio | goal | CPU s (all processes) |")
    print("|---|---:|---|---:|---:|---:|---:|")
    rows = (
        (f"curate {w}", "ac", "bare AC loop, 1 core", ">= 0.8"),
        (f"curate {w}", "curate 1", "`vecap curate --workers 1`", ">= 1.6"),
        ("curate 1", "ac", "bare AC loop, 1 core", ""),
        (f"mix {w}", "orjson", "bare orjson loop, 1 core", ">= 0.9"),
        (f"mix {w}", "mix 1", "`vecap mix --policy first --workers 1`", ""),
        ("mix 1", "orjson", "bare orjson loop, 1 core", ""),
    )
    for ours, theirs, label, goal in rows:
        command = "curate" if ours.startswith("curate") else "mix --policy first"
        workers = ours.split()[1]
        print(
            f"| `vecap {command} --workers {workers}` | {n / top[ours][0]:,.0f} | {label} "
            f"{n / top[theirs][0]:,.0f}/s | {top[theirs][0] / top[ours][0]:.2f} "
            f"| {mid[theirs] / mid[ours]:.2f} | {goal} "
            f"| {top[ours][1]:.2f} |"
        )
    print(
        "\nvecap times are whole commands (process start, imports; curate: metadata load and "
        "automaton build, in the parent before the workers start); the bare loops run in "
        "this process (the automaton built outside the timing). Best of each over the rounds; "
        "the median ratio divides the medians."
    )


if __name__ == "__main__":
    main()
