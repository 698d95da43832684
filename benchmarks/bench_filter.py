"""`vecap filter score` beside `vecap eval`'s embedding (issue 18): images/s, same model, CPU.

Both embed the same N images and one caption each with the same random-weight
open_clip model (a small ViT config, saved as a checkpoint), fp32, batch 64,
4 decoding threads: `vecap eval --task retrieval` on an `image,caption` CSV (it
embeds both towers, then computes recall), `vecap filter score` on the same pairs
as JSONL (it embeds both towers, then writes filter.clip_score per record). The
goal is filter >= 0.9x eval: filtering should cost no more than embedding.

Times are whole commands (process start, model load, decode, embedding, output),
best of --repeat alternating runs; CPU seconds (steadier on a shared machine)
beside. Images: the first N Flickr8k photos (128 px JPEGs) from ../shared/data
when present, else N generated 128 px JPEGs with random words as captions.
"""

import argparse
import csv
import io
import json
import os
import platform
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

WORK = Path(__file__).parent / "_work" / "filter"
FLICKR8K = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "flickr8k"
ARCH = "vecap-bench-vit"
CONFIG = {  # a small ViT: 64 px, 4 layers each tower, 77-token text
    "embed_dim": 128,
    "vision_cfg": {"image_size": 64, "layers": 4, "width": 192, "patch_size": 16, "head_width": 64},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 192, "heads": 3, "layers": 4},
}
WORDS = [
    "a",
    "the",
    "dog",
    "cat",
    "man",
    "woman",
    "child",
    "red",
    "blue",
    "green",
    "runs",
    "sits",
    "on",
    "in",
    "with",
    "near",
    "water",
    "grass",
]


def pairs(n: int) -> tuple[list[tuple[Path, str]], str]:
    if (FLICKR8K / "captions.csv").is_file():
        seen: dict[str, str] = {}
        with open(FLICKR8K / "captions.csv", newline="") as f:
            for image, text in list(csv.reader(f))[1:]:
                seen.setdefault(image, text)
                if len(seen) == n:
                    break
        return [(FLICKR8K / "images" / i, t) for i, t in seen.items()], "Flickr8k"
    from PIL import Image

    rng = random.Random(0)
    folder = WORK / "images"
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        path = folder / f"{i:05d}.jpg"
        if not path.exists():
            buf = io.BytesIO()
            Image.frombytes("RGB", (128, 128), rng.randbytes(128 * 128 * 3)).save(buf, "JPEG")
            path.write_bytes(buf.getvalue())
        out.append((path, " ".join(rng.choices(WORDS, k=8))))
    return out, "generated"


def make_model() -> tuple[Path, Path]:
    import open_clip
    import torch

    config = WORK / f"{ARCH}.json"
    config.write_text(json.dumps(CONFIG))
    open_clip.add_model_config(config)
    checkpoint = WORK / f"{ARCH}-random.pt"
    torch.manual_seed(0)
    torch.save({"state_dict": open_clip.create_model(ARCH).state_dict()}, checkpoint)
    return config, checkpoint


def timed(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the command)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{done.stderr[-3000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    data, source = pairs(args.images)
    n = len(data)
    with open(WORK / "pairs.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "caption"])
        writer.writerows((str(p), t) for p, t in data)
    with open(WORK / "pairs.jsonl", "w") as f:
        f.writelines(
            json.dumps({"key": f"{i:05d}", "alt": t, "image": str(p)}) + "\n"
            for i, (p, t) in enumerate(data)
        )
    config, checkpoint = make_model()
    model = ["--model", str(config), "--pretrained", str(checkpoint), "--batch-size", "64", "-q"]
    vecap = [sys.executable, "-m", "vecap_cli"]
    eval_cmd = [*vecap, "eval", "--task", "retrieval", str(WORK / "pairs.csv"), "--image-root",
                "/", "--workers", "4", "--device", "cpu", "-o", str(WORK / "eval.json"), *model]  # fmt: skip
    filter_cmd = [*vecap, "filter", "score", str(WORK / "pairs.jsonl"), "--decode-threads", "4",
                  "--device", "cpu", "-o", str(WORK / "scored.jsonl"), *model]  # fmt: skip
    runs: dict[str, list] = {"eval": [], "filter": []}
    for _ in range(args.repeat):  # alternating, so a change in machine load hits both
        runs["eval"].append(timed(eval_cmd))
        runs["filter"].append(timed(filter_cmd))
    scored = sum(1 for _ in open(WORK / "scored.jsonl"))
    assert scored == n, f"filter wrote {scored} of {n} records"
    (wall_e, cpu_e), (wall_f, cpu_f) = min(runs["eval"]), min(runs["filter"])
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, load average {os.getloadavg()[0]:.1f}; "
        f"{ARCH} ({json.dumps(CONFIG['vision_cfg'])}), random weights, fp32 CPU, batch 64; "
        f"{n} {source} images, 1 caption each"
    )
    print("| command | images | img/s | CPU s | ratio (filter/eval) | goal |")
    print("|---|---:|---:|---:|---:|---:|")
    print(f"| vecap eval --task retrieval | {n:,} | {n / wall_e:,.1f} | {cpu_e:.1f} | | |")
    print(
        f"| vecap filter score | {n:,} | {n / wall_f:,.1f} | {cpu_f:.1f} "
        f"| {wall_e / wall_f:.2f} (CPU {cpu_e / cpu_f:.2f}) | >= 0.9 |"
    )
    print(f"\nWhole commands, best of {args.repeat} alternating runs.")


if __name__ == "__main__":
    main()
