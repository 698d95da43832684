"""Perceptual dedup: near pairs among 100k 64-bit pHashes, by the multi-index of
vecap_cli/steps/filter/hashes.py beside a numpy brute force over all pairs.

    python benchmarks/bench_dedup.py [--n 100000] [--d 4,8,10]

Hashes are uniform random, with near pairs planted (every 20th hash a copy of
another with 0..d bits flipped) and a crowd of 1% sharing their top 16 bits
(near-blank images crowd one chunk value). Both find the same pairs (checked);
the brute force compares every pair, 1,024 rows at a time, with numpy's popcount.
"""

import argparse
import time

import numpy as np

from vecap_cli.steps.filter.hashes import brute_pairs, near_pairs


def planted(n: int, d: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    h = rng.integers(0, 2**64 - 1, n, dtype=np.uint64, endpoint=True)
    for target in range(0, n, 20):
        flips = rng.choice(64, size=int(rng.integers(0, d + 1)), replace=False)
        h[target] = h[int(rng.integers(0, n))] ^ np.uint64(sum(1 << int(b) for b in flips))
    crowd = rng.choice(n, n // 100, replace=False)
    h[crowd] &= np.uint64(0xFFFF_0000_0000_0000)
    return h


def timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--d", default="4,8,10")
    args = parser.parse_args()
    print("| hashes | d | pairs | multi-index | brute force | speed-up | same pairs |")
    print("|---:|---:|---:|---:|---:|---:|---|")
    for d in map(int, args.d.split(",")):
        h = planted(args.n, d)
        t_index, (i, j) = timed(near_pairs, h, d)
        t_brute, (bi, bj) = timed(brute_pairs, h, d)
        same = np.array_equal(i, bi) and np.array_equal(j, bj)
        print(
            f"| {args.n:,} | {d} | {len(i):,} | {t_index:.2f} s | {t_brute:.1f} s "
            f"| {t_brute / t_index:.0f}× | {'yes' if same else 'NO'} |",
            flush=True,
        )
        if not same:
            raise SystemExit("the index and the brute force disagree")


if __name__ == "__main__":
    main()
