"""`vecap eval` beside `clip_benchmark eval` (issue 6): images/s, same model and data, CPU.

Both commands run as subprocesses on the same random-weight open_clip model
(saved as a checkpoint) and the same Flickr8k images, fp32 (`--no_amp` for
clip_benchmark; vecap uses AMP on GPU only), batch 64, each with its default
loader parallelism (clip_benchmark: 4 DataLoader workers; vecap: 4 decoding
threads). Times are wall clock, process start and model load included, best of
--repeat alternating runs; CPU seconds (steadier on a shared machine) beside.
vecap's edge on retrieval is mostly its text tower running on the captions'
~24 tokens instead of the padded 77 (vecap_cli/eval/trim.py).

1. retrieval: the first --images Flickr8k images whose captions need no CSV
   quoting (clip_benchmark's Flickr reader does not unquote), 5 captions each,
   read from `image,caption` CSV by both.
2. zero-shot: Flickr8k images labelled by the class word most of their captions
   use, in clip_benchmark's webdataset layout (test/N.tar, classnames.txt,
   zeroshot_classification_templates.txt), read from the same tars by both;
   OpenAI's 7 "simple" ImageNet templates.

clip_benchmark 1.6.2's zero-shot `accuracy()` fails under NumPy >= 2.4 (float()
of a one-element array); its CLI runs here with only that conversion patched.
The metrics of both sides are printed; they should agree.
"""

import argparse
import csv
import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

WORK = Path(__file__).parent / "_work" / "eval"
FLICKR8K = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "flickr8k"
CLASSES = ["dog", "man", "woman", "girl", "boy", "bike", "water", "ball", "snow", "grass"]
TEMPLATES = [
    "itap of a {c}.",
    "a bad photo of the {c}.",
    "a origami {c}.",
    "a photo of the large {c}.",
    "a {c} in a video game.",
    "art of the {c}.",
    "a photo of the small {c}.",
]

CLIP_BENCHMARK = """
import sys
import clip_benchmark.metrics.zeroshot_classification as zc

def accuracy(output, target, topk=(1,)):  # 1.6.2's, but .item() for float(array)
    pred = output.topk(max(topk), 1, True, True)[1].t()
    correct = pred.eq(target.view(1, -1).expand_as(pred))
    return [float(correct[:k].reshape(-1).float().sum(0).item()) / len(target) for k in topk]

zc.accuracy = accuracy
from clip_benchmark.cli import main
sys.argv = ["clip_benchmark"] + sys.argv[1:]
main()
"""


def read_captions() -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    with open(FLICKR8K / "captions.csv", newline="") as f:
        for image, text in list(csv.reader(f))[1:]:
            groups.setdefault(image, []).append(text)
    return groups


def make_retrieval(groups, n: int) -> Path:
    plain = [
        (img, caps) for img, caps in groups.items() if not any('"' in c or "," in c for c in caps)
    ]
    path = WORK / f"retrieval-{n}.csv"
    with open(path, "w", newline="") as f:
        f.write("image,caption\n")
        for image, captions in plain[:n]:
            f.writelines(f"{image},{c}\n" for c in captions)
    return path


def label(captions: list[str]) -> int | None:
    votes = Counter(c for text in captions for c in CLASSES if c in text.lower().split())
    if not votes:
        return None
    (best, count), *rest = votes.most_common()
    return CLASSES.index(best) if count >= 3 and (not rest or rest[0][1] < count) else None


def make_zeroshot(groups, n: int, shards: int = 4) -> Path:
    import webdataset as wds

    root = WORK / f"zeroshot-{n}"
    labelled = [(img, cls) for img, caps in groups.items() if (cls := label(caps)) is not None][:n]
    (root / "test").mkdir(parents=True, exist_ok=True)
    for s in range(shards):
        with wds.TarWriter(str(root / "test" / f"{s}.tar")) as sink:
            for image, cls in labelled[s::shards]:
                data = (FLICKR8K / "images" / image).read_bytes()
                sink.write({"__key__": image[:-4], "jpg": data, "cls": cls})
    (root / "test" / "nshards.txt").write_text(str(shards))
    (root / "classnames.txt").write_text("\n".join(CLASSES) + "\n")
    (root / "zeroshot_classification_templates.txt").write_text("\n".join(TEMPLATES) + "\n")
    return root


def make_model(arch: str) -> Path:
    import open_clip
    import torch

    path = WORK / f"{arch}-random.pt"
    if not path.exists():
        torch.manual_seed(0)
        torch.save({"state_dict": open_clip.create_model(arch).state_dict()}, path)
    return path


def timed(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the command and the workers it waited for)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{done.stderr[-3000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def run_pair(name, n, vecap_args, cb_args, arch, checkpoint, repeat):
    slug = name.split()[0]
    vecap_out, cb_out = WORK / f"vecap-{slug}.json", WORK / f"cb-{slug}.json"
    vecap = [sys.executable, "-m", "vecap_cli", "eval", "-q", "--model", arch, "--pretrained",
             str(checkpoint), "--batch-size", "64", "-o", str(vecap_out), *vecap_args]  # fmt: skip
    cb = [sys.executable, "-c", CLIP_BENCHMARK, "eval", "--model", arch, "--pretrained",
          str(checkpoint), "--batch_size", "64", "--no_amp", "--quiet", "--output", str(cb_out),
          *cb_args]  # fmt: skip
    runs = {"cb": [], "vecap": []}
    for _ in range(repeat):  # alternating, so a change in machine load hits both
        runs["cb"].append(timed(cb))
        runs["vecap"].append(timed(vecap))
    ours = json.loads(vecap_out.read_text())["metrics"]
    theirs = json.loads(cb_out.read_text())["metrics"]
    agree = all(abs(ours[k] - theirs[k]) <= 1e-6 for k in theirs if theirs[k] == theirs[k])
    return name, n, min(runs["cb"]), min(runs["vecap"]), agree


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--model", default="ViT-S-32")
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    if not FLICKR8K.is_dir():
        sys.exit(f"needs {FLICKR8K}")
    WORK.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    groups = read_captions()
    checkpoint = make_model(args.model)
    retrieval = make_retrieval(groups, args.images)
    zeroshot = make_zeroshot(groups, args.images)
    n_zs = sum(1 for img, caps in groups.items() if label(caps) is not None)
    shards = sorted(str(p) for p in (zeroshot / "test").glob("*.tar"))
    rows = [
        run_pair(
            "retrieval (5 captions/image)", args.images,
            ["--task", "retrieval", str(retrieval), "--image-root", str(FLICKR8K / "images")],
            ["--task", "zeroshot_retrieval", "--dataset", "flickr8k", "--dataset_root",
             str(FLICKR8K / "images"), "--annotation_file", str(retrieval), "--recall_k", "1", "5", "10"],
            args.model, checkpoint, args.repeat,
        ),
        run_pair(
            f"zero-shot ({len(CLASSES)} classes × {len(TEMPLATES)} templates)", min(args.images, n_zs),
            ["--task", "zeroshot", *shards, "--classnames", str(zeroshot / "classnames.txt"),
             "--templates", str(zeroshot / "zeroshot_classification_templates.txt")],
            ["--task", "zeroshot_classification", "--dataset", "wds/flickr8k-classes",
             "--dataset_root", str(zeroshot)],
            args.model, checkpoint, args.repeat,
        ),
    ]  # fmt: skip
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()};"
        f" model {args.model} (random weights), fp32 CPU, batch 64"
    )
    print(
        "| task | images | clip_benchmark img/s | vecap img/s | ratio | goal "
        "| CPU-seconds ratio | metrics agree |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for name, n, (wall_cb, cpu_cb), (wall_vecap, cpu_vecap), agree in rows:
        print(
            f"| {name} | {n:,} | {n / wall_cb:,.1f} | {n / wall_vecap:,.1f} "
            f"| {wall_cb / wall_vecap:.2f} | >= 1.0 | {cpu_cb / cpu_vecap:.2f} "
            f"| {'yes' if agree else 'NO'} |"
        )
    print(
        "\nTimes are whole commands (process start, model load, data, embedding, metrics),"
        f" best of {args.repeat}; CPU seconds include clip_benchmark's DataLoader workers."
    )


if __name__ == "__main__":
    main()
