"""`vecap curate` throughput (issue 3), beside the loops it is measured against, in one run.

Pool: the 10k real LAION AltTexts of ../shared/data/laion-alt-10k.jsonl repeated to
--records (keys made unique). Metadata: WordNet synset names plus every WordNet
lemma (as titles), ~150k entries; the memory row uses a 500k list topped up with
two-lemma entries (a stand-in for Wikipedia bigrams and titles).

1. end-to-end `vecap curate POOL -o out.jsonl` (one process, one read: count,
   then balance the records held in memory) vs a bare pyahocorasick loop over the
   same texts in this process: MetaCLIP's spacing, `automaton.iter`, a set of ids
   (goal: >= 0.5x), as ratios of CPU time (the fair one on a shared machine) and
   of wall time. The sharded passes alone (`count`, and `balance` with those
   counts, one read each) are timed against the same loop.
   The floor: the one-pass's algorithm with nothing around it, in this process
   (orjson reads every record, `Matcher.find_many` matches them in batches, the
   matched ones are held and counted, balanced, and the kept ones written with
   orjson): no streams, no accounting, no CLI. Its ratio to the bare loop is the
   most any curate that reads and writes JSONL this way could reach.
2. the naive v1 loop (`" e " in spaced_text` for every entry) on a sample of texts:
   the speed-up of end-to-end vecap over it.
3. peak memory (max RSS) of `vecap curate` with the 500k-entry metadata.
4. sharded: `count` on 2 ranks at once, `count --merge`, `balance` on 2 ranks at
   once, over --shards JSONL shards, vs the one-pass in one process.

Needs ../shared/data/laion-alt-10k.jsonl and WordNet (Debian's wordnet-base).
"""

import argparse
import gc
import os
import platform
import random
import subprocess
import sys
import time
from pathlib import Path

import orjson

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
LAION = REPO.parent / "shared" / "data" / "laion-alt-10k.jsonl"
WORDNET = "/usr/share/wordnet"
WORK = Path(__file__).parent / "_work" / "curate"


def vecap_cmd(*args) -> list[str]:
    return [sys.executable, "-m", "vecap_cli", "curate", *map(str, args)]


def run_timed(cmd: list[str]) -> tuple[float, float, int]:
    """(wall s, cpu s, max RSS MiB) of a child process."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss // 1024


def run_parallel(cmds: list[list[str]]) -> float:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    start = time.perf_counter()
    procs = [subprocess.Popen(cmd, env=env) for cmd in cmds]
    if any(p.wait() != 0 for p in procs):
        raise SystemExit(f"failed: {cmds}")
    return time.perf_counter() - start


def make_pool(n: int) -> tuple[Path, list[str]]:
    records = [orjson.loads(line) for line in LAION.read_bytes().splitlines()]
    path = WORK / f"pool-{n}.jsonl"
    with open(path, "wb") as f:
        for i in range(n):
            record = dict(records[i % len(records)])
            record["key"] = f"{i:09d}"
            f.write(orjson.dumps(record) + b"\n")
    # read back: one string per record, as vecap reads them (the repeated records
    # would hand the bare loop the same 10k strings, cache-hot, again and again)
    texts = [orjson.loads(line)["alt"] for line in path.read_bytes().splitlines()]
    return path, texts


def make_shards(pool: Path, n_shards: int) -> list[Path]:
    lines = pool.read_bytes().splitlines(keepends=True)
    per = -(-len(lines) // n_shards)
    paths = []
    for s in range(n_shards):
        path = WORK / "shards" / f"{s:03d}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"".join(lines[s * per : (s + 1) * per]))
        paths.append(path)
    return paths


def wordnet_lemmas() -> list[str]:
    lemmas = []
    for pos in ("noun", "verb", "adj", "adv"):
        for line in open(f"{WORDNET}/index.{pos}", encoding="utf-8"):
            if not line.startswith(" "):
                lemmas.append(line.split(" ", 1)[0])
    return lemmas


def make_metadata(size: int) -> Path:
    """`vecap curate metadata` with WordNet, WordNet lemmas as titles, and (to reach
    `size`) synthetic two-lemma titles."""
    lemmas = wordnet_lemmas()
    rng = random.Random(0)
    pairs = [f"{rng.choice(lemmas)} {rng.choice(lemmas)}" for _ in range(max(0, size - 100_000))]
    titles = WORK / f"titles-{size}.txt"
    titles.write_text("\n".join(lemmas + pairs) + "\n")
    path = WORK / f"metadata-{size}.json"
    run_timed(vecap_cmd("metadata", "-q", "--titles", titles, "--max-entries", size, "-o", path))
    return path


def bare_loop(texts: list[str], entries: list[str]) -> tuple[float, float]:
    """(wall s, CPU s) of the bare match loop (automaton built outside the timing)."""
    import ahocorasick

    from vecap_cli.steps.curate.matching import spacing

    automaton = ahocorasick.Automaton(ahocorasick.STORE_INTS)
    for idx, entry in enumerate(entries):
        automaton.add_word(f" {entry} ", idx)
    automaton.make_automaton()
    search = automaton.iter
    start, cpu = time.perf_counter(), time.process_time()
    for text in texts:
        {idx for _, idx in search(spacing(text))}  # the work measured
    return time.perf_counter() - start, time.process_time() - cpu


def floor_loop(pool: Path, entries: list[str], out: Path, t: int = 20_000) -> tuple[float, float]:
    """(wall s, CPU s) of the one-pass with nothing around it (matcher built outside)."""
    import numpy as np

    from vecap_cli.steps.curate.balancing import Balancer, entry_probabilities
    from vecap_cli.steps.curate.matching import Matcher

    find_many = Matcher(entries).find_many
    loads, dumps, newline = orjson.loads, orjson.dumps, orjson.OPT_APPEND_NEWLINE
    gc.disable()  # as the one-pass does while it holds records
    start, cpu = time.perf_counter(), time.process_time()
    held = []
    with open(pool, "rb") as f:
        while lines := f.readlines(1 << 18):
            records = [loads(line) for line in lines]
            found = find_many([r["alt"] for r in records])
            held.extend([(r, ids) for r, ids in zip(records, found, strict=True) if ids])
    flat = np.fromiter((e for _, ids in held for e in ids), dtype=np.int32)
    counts = np.bincount(flat, minlength=len(entries)).tolist()
    balancer = Balancer(entry_probabilities(counts, t), 0)
    with open(out, "wb") as f:
        for record, ids in held:
            p, keep = balancer(record["key"], ids)
            if keep:
                record["curate"] = {"entries": ids, "p": p, "keep": keep}
                f.write(dumps(record, option=newline))
    held.clear()
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    gc.enable()
    return wall, cpu


def naive_loop(texts: list[str], entries: list[str]) -> float:
    from vecap_cli.steps.curate.matching import spacing

    spaced_entries = [f" {e} " for e in entries]
    start = time.process_time()
    for text in texts:
        spaced = spacing(text)
        [i for i, e in enumerate(spaced_entries) if e in spaced]
    return time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--entries", type=int, default=150_000)
    parser.add_argument("--big-entries", type=int, default=500_000)
    parser.add_argument("--naive-sample", type=int, default=200)
    parser.add_argument("--shards", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if not LAION.exists() or not os.path.isdir(WORDNET):
        raise SystemExit(f"needs {LAION} and WordNet in {WORDNET} (apt-get install wordnet-base)")
    WORK.mkdir(parents=True, exist_ok=True)
    n = args.records
    pool, texts = make_pool(n)
    metadata = make_metadata(args.entries)
    big = make_metadata(args.big_entries)
    entries = orjson.loads(metadata.read_bytes())
    out = WORK / "out.jsonl"

    # 1. end-to-end vs bare, interleaved, best of --repeat (the machine may be shared)
    counts = WORK / "counts.json"
    runs: dict[str, list[tuple[float, float]]] = {
        k: [] for k in ("vecap", "bare", "floor", "count", "balance")
    }
    rss = 0
    for _ in range(args.repeat):
        wall, cpu, rss = run_timed(vecap_cmd(pool, "--metadata", metadata, "-q", "-o", out))
        runs["vecap"].append((wall, cpu))
        runs["bare"].append(bare_loop(texts, entries))
        runs["floor"].append(floor_loop(pool, entries, WORK / "floor.jsonl"))
        count_cmd = vecap_cmd("count", pool, "--metadata", metadata, "-q", "-o", counts)
        runs["count"].append(run_timed(count_cmd)[:2])
        balance_cmd = vecap_cmd(
            "balance", pool, "--metadata", metadata, "--counts", counts, "-q", "-o", out
        )
        runs["balance"].append(run_timed(balance_cmd)[:2])
    same = (WORK / "floor.jsonl").read_bytes() == out.read_bytes()
    # best wall and best CPU time of each, over the rounds
    best = {name: (min(w for w, _ in r), min(c for _, c in r)) for name, r in runs.items()}
    t_cpu = best["vecap"][1]

    # 2. naive v1 loop on a sample
    sample = texts[:: max(1, n // args.naive_sample)][: args.naive_sample]
    t_naive = naive_loop(sample, entries) / len(sample)

    # 3. peak memory with the big list
    big_wall, _, big_rss = run_timed(vecap_cmd(pool, "--metadata", big, "-q", "-o", out))

    # 4. sharded over 2 ranks vs one-pass in one process
    shards = make_shards(pool, args.shards)
    t_count = run_parallel(
        [
            vecap_cmd(
                "count",
                *shards,
                "--metadata",
                metadata,
                "-q",
                "-o",
                counts,
                "--rank",
                r,
                "--world-size",
                2,
            )
            for r in (0, 1)
        ]
    )
    merged = WORK / "counts-all.json"
    t_merge, _, _ = run_timed(
        vecap_cmd(
            "count",
            "--merge",
            WORK / "counts.rank0.json",
            WORK / "counts.rank1.json",
            "-q",
            "-o",
            merged,
        )
    )
    t_balance = run_parallel(
        [
            vecap_cmd(
                "balance",
                *shards,
                "--metadata",
                metadata,
                "--counts",
                merged,
                "-q",
                "-o",
                WORK / "sharded" / "%06d.jsonl",
                "--rank",
                r,
                "--world-size",
                2,
            )
            for r in (0, 1)
        ]
    )
    t_sharded = t_count + t_merge + t_balance
    t_onepass_shards, _, _ = run_timed(vecap_cmd(*shards, "--metadata", metadata, "-q", "-o", out))

    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
        f"pool {n:,} records (LAION 10k repeated), metadata {len(entries):,} entries; "
        f"the floor writes what vecap writes: {'yes' if same else 'NO'}"
    )
    print("| case | records/s | vs | ratio | goal |")
    print("|---|---:|---|---:|---:|")
    for name, label in (
        ("floor", "floor: the one-pass with nothing around it, in-process"),
        ("vecap", "`vecap curate` end-to-end, 1 process"),
        ("count", "`vecap curate count` alone, 1 process"),
        ("balance", "`vecap curate balance --counts` alone, 1 process"),
    ):
        goal = ">= 0.5" if name == "vecap" else ""
        for kind, i in (("CPU time", 1), ("wall", 0)):
            ours, bare = best[name][i], best["bare"][i]
            print(
                f"| {label} ({kind}) | {n / ours:,.0f} | bare AC loop {n / bare:,.0f}/s "
                f"| {bare / ours:.2f} | {goal} |"
            )
    for kind, i in (("CPU time", 1), ("wall", 0)):
        print(
            f"| `vecap curate` end-to-end ({kind}) | {n / best['vecap'][i]:,.0f} | floor "
            f"{n / best['floor'][i]:,.0f}/s | {best['floor'][i] / best['vecap'][i]:.2f} | |"
        )
    print(
        f"| naive v1 loop, {len(sample)} texts x {len(entries):,} entries (CPU time) | "
        f"{1 / t_naive:,.1f} | `vecap curate` | {t_naive * n / t_cpu:,.0f}x faster | |"
    )
    print(
        f"| `vecap curate`, {args.big_entries:,}-entry metadata (wall) | {n / big_wall:,.0f} | "
        f"peak RSS ({len(entries):,} entries: {rss:,} MiB) | {big_rss:,} MiB | |"
    )
    print(
        f"| count + merge + balance, `--world-size 2` ({args.shards} shards, 2 cores) | "
        f"{n / t_sharded:,.0f} | one-pass, 1 process {n / t_onepass_shards:,.0f}/s | "
        f"{t_onepass_shards / t_sharded:.2f}x | |"
    )
    print(
        "\nvecap times include process start, metadata load and the automaton build (CPU "
        "time: user + system of the process); the bare and naive loops run in this process, "
        "automaton built outside the timing. Best of each over the rounds."
    )


if __name__ == "__main__":
    main()
