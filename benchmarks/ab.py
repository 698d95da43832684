"""Time one vecap command in two checkouts, alternately: the before/after rows.

    python benchmarks/ab.py OLD_TREE RUNS ARGS...

runs `python -m vecap_cli ARGS` RUNS times in OLD_TREE and in this checkout, in
turn (so drift in the machine's load falls on both), with this interpreter; each
tree imports its own vecap_cli (the working directory comes first on sys.path).
Prints min and median seconds per tree and the new/old ratios. OLD_TREE is a
worktree of the older commit: `git worktree add --detach /tmp/old REV`.
"""

import statistics
import subprocess
import sys
import time
from pathlib import Path


def main(old: str, runs: int, args: list[str]) -> None:
    trees = {"old": Path(old).resolve(), "new": Path(__file__).resolve().parent.parent}
    seconds: dict[str, list[float]] = {name: [] for name in trees}
    for _ in range(runs):
        for name, tree in trees.items():
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "vecap_cli", *args], cwd=tree, check=True)
            seconds[name].append(time.perf_counter() - start)
    for name, times in seconds.items():
        print(f"{name}: min {min(times):.3f} s, median {statistics.median(times):.3f} s")
    new, old_ = seconds["new"], seconds["old"]
    print(
        f"new/old time: {min(new) / min(old_):.3f} (min), "
        f"{statistics.median(new) / statistics.median(old_):.3f} (median)"
    )


if __name__ == "__main__":
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3:])
