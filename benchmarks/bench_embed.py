"""`vecap embed` beside `vecap filter score` (issue 20): images/s, same model, CPU.

Both read the same N records (a JSONL of image paths, one caption each) and run
the same random-weight open_clip model (bench_filter.py's small ViT), fp32,
batch 64, 4 decoding threads. `filter score` embeds each image once and its
caption, and writes a score; `embed -k K --text-keys alt` embeds K augmented
views of each image and its caption, and writes a tar with the image and the
float16 members. With K = 1 both do the same model work, so embed should cost
about what filter costs (goal: >= 0.9x its images/s); K = 4 shows how the cost
grows with the views (goal: none, about K times the image tower).

Times are whole commands (process start, model load, decode, embedding, output),
best of --repeat alternating runs; CPU seconds (steadier on a shared machine)
beside.
"""

import argparse
import json
import os
import platform
import sys
from pathlib import Path

from bench_filter import ARCH, CONFIG, WORK, make_model, pairs, timed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--views", type=int, default=4, help="K of the second embed run")
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    data, source = pairs(args.images)
    n = len(data)
    with open(WORK / "pairs.jsonl", "w") as f:
        f.writelines(
            json.dumps({"key": f"{i:05d}", "alt": t, "image": str(p)}) + "\n"
            for i, (p, t) in enumerate(data)
        )
    config, checkpoint = make_model()
    model = ["--model", str(config), "--pretrained", str(checkpoint), "--batch-size", "64",
             "--decode-threads", "4", "--device", "cpu", "-q"]  # fmt: skip
    vecap = [sys.executable, "-m", "vecap_cli"]
    commands = {
        "vecap filter score": [*vecap, "filter", "score", str(WORK / "pairs.jsonl"),
                               "-o", str(WORK / "scored.jsonl"), *model],
        "vecap embed -k 1": [*vecap, "embed", str(WORK / "pairs.jsonl"), "-k", "1",
                             "--text-keys", "alt", "-o", str(WORK / "embedded1.tar"), *model],
        f"vecap embed -k {args.views}": [*vecap, "embed", str(WORK / "pairs.jsonl"), "-k",
                                         str(args.views), "--text-keys", "alt",
                                         "-o", str(WORK / "embeddedK.tar"), *model],
    }  # fmt: skip
    runs: dict[str, list] = {name: [] for name in commands}
    for _ in range(args.repeat):  # alternating, so a change in machine load hits all
        for name, cmd in commands.items():
            runs[name].append(timed(cmd))
    best = {name: min(times) for name, times in runs.items()}
    wall_f, cpu_f = best["vecap filter score"]
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, load average {os.getloadavg()[0]:.1f}; "
        f"{ARCH} ({json.dumps(CONFIG['vision_cfg'])}), random weights, fp32 CPU, batch 64; "
        f"{n} {source} images, 1 caption each"
    )
    print("| command | images | img/s | CPU s | ratio (img/s vs filter) | goal |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, (wall, cpu) in best.items():
        ratio = (
            ""
            if name.startswith("vecap filter")
            else f"{wall_f / wall:.2f} (CPU {cpu_f / cpu:.2f})"
        )
        goal = ">= 0.9" if name == "vecap embed -k 1" else ""
        print(f"| {name} | {n:,} | {n / wall:,.1f} | {cpu:.1f} | {ratio} | {goal} |")
    print(f"\nWhole commands, best of {args.repeat} alternating runs.")


if __name__ == "__main__":
    main()
