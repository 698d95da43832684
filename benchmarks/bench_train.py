"""`vecap train` beside open_clip's own trainer (`python -m open_clip_train.main`), on CPU.

Same tiny config (vecap-tiny, 32 px), same webdataset shards, same batch, same
data workers, fp32, in one run:

1. throughput: samples/s in the steady state, timed by a timestamp after each
   optimizer step inside both trainers (start-up, imports and saves excluded);
   open_clip as shipped (torch's default threads) and with the compute threads
   vecap picks (cores - workers), so the ratio shows what each part gives;
2. memory: peak RSS of the largest process (the trainer's main one) at that
   batch, and at --big-batch, where open_clip's B×B logits are about half its
   peak (both sides with gradient checkpointing; one step). For this tiny model
   the recomputed blocks' activations stay large: the logits pass them only
   near B = 32k, which needs more than 24 GiB in open_clip.

open_clip_train runs as its `training` extra installs it (webdataset <= 0.2.86:
newer ones break its loader, open_clip issue #935); the wrapper only registers the
vecap-tiny config before calling its `main()`.
"""

import argparse
import io
import json
import os
import platform
import random
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORK = Path(__file__).parent / "_work" / "train"
SHARD = 512

# Both trainers clamp logit_scale once per step, after the optimizer step: a
# timestamp there, in each, times the steady state without touching either loop.
STAMPS = """
import atexit, os, time
stamps = []
def stamped(clamp):
    def wrapper(*args, **kwargs):
        out = clamp(*args, **kwargs)
        stamps.append(time.perf_counter())
        return out
    return wrapper
atexit.register(lambda: open(os.environ["BENCH_STAMPS"], "w").write(repr(stamps)))
"""
OPEN_CLIP = (
    STAMPS
    + f"""
import sys
import open_clip
open_clip.add_model_config({str(REPO / "vecap_cli/train/model_configs")!r})
import open_clip_train.train as train
train.unwrap_model = stamped(train.unwrap_model)
from open_clip_train.main import main
main(sys.argv[1:])
"""
)
VECAP = (
    STAMPS
    + """
import sys
import vecap_cli.train.loop as loop
loop.clamp_logit_scale = stamped(loop.clamp_logit_scale)
from vecap_cli.cli.app import main
main(sys.argv[1:])
"""
)
WARMUP_STEPS = 3  # not timed: worker start, first allocations


def make_shards(n: int) -> list[Path]:
    import webdataset as wds
    from PIL import Image, ImageDraw

    directory = WORK / "shards"
    shards = [directory / f"{s:04d}.tar" for s in range(-(-n // SHARD))]
    if all(p.exists() for p in shards):
        return shards
    directory.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    colors = {"red": (220, 30, 30), "green": (30, 190, 30), "blue": (30, 30, 220)}
    for s, path in enumerate(shards):
        with wds.TarWriter(str(path)) as sink:
            for i in range(SHARD):
                color, shape = rng.choice(list(colors)), rng.choice(["square", "circle"])
                image = Image.new("RGB", (32, 32), (255, 255, 255))
                box = (
                    rng.randint(0, 8),
                    rng.randint(0, 8),
                    rng.randint(20, 31),
                    rng.randint(20, 31),
                )
                draw = ImageDraw.Draw(image)
                (draw.rectangle if shape == "square" else draw.ellipse)(box, fill=colors[color])
                buf = io.BytesIO()
                image.save(buf, format="JPEG")
                key = f"{s:04d}{i:05d}"
                caption = f"a {color} {shape} number {rng.randint(0, 999)}"
                sink.write(
                    {
                        "__key__": key,
                        "jpg": buf.getvalue(),
                        "txt": caption,
                        "json": {"alt": caption},
                    }
                )
    return shards


def measure(
    build, shards, name: str, n: int, batch: int, workers: int, extra=(), env=None
) -> tuple[float, int]:
    """(steady samples/s, peak RSS in MiB of the largest process of the tree)."""
    out = WORK / name
    shutil.rmtree(out, ignore_errors=True)  # open_clip refuses an existing run (exiting 0)
    cmd = build(shards, out, n, batch, workers, extra)
    stamps = WORK / f"{name}.stamps"
    env = {**os.environ, **(env or {}), "BENCH_STAMPS": str(stamps)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        sys.exit(f"failed: {' '.join(cmd[:3])}...\n{err.decode()[-3000:]}")
    times = eval(stamps.read_text())  # a list of floats we wrote
    if len(times) != n // batch:
        sys.exit(f"{name}: {len(times)} steps, not {n // batch}\n{err.decode()[-3000:]}")
    timed = times[WARMUP_STEPS - 1 :]
    rate = (len(timed) - 1) * batch / (timed[-1] - timed[0]) if len(timed) > 1 else float("nan")
    return rate, usage.ru_maxrss // 1024


def vecap(shards, out, n, batch, workers, extra=()) -> list[str]:
    return [
        sys.executable, "-c", VECAP, "train", *map(str, shards), "-o", str(out),
        "--model", "vecap-tiny", "--batch-size", str(batch), "--train-num-samples", str(n),
        "--workers", str(workers), "--warmup", "3", "--lr", "1e-3", "--precision", "fp32",
        "--device", "cpu", "-q", "--stats", f"{out}.json", *extra,
    ]  # fmt: skip


def open_clip(shards, out, n, batch, workers, extra=()) -> list[str]:
    spec = f"{shards[0].parent}/{{0000..{len(shards) - 1:04d}}}.tar"
    return [
        sys.executable, "-c", OPEN_CLIP, "--train-data", spec, "--dataset-type", "webdataset",
        "--train-num-samples", str(n), "--model", "vecap-tiny", "--batch-size", str(batch),
        "--epochs", "1", "--workers", str(workers), "--precision", "fp32", "--warmup", "3",
        "--lr", "1e-3", "--device", "cpu", "--logs", str(out), "--name", "run",
        "--report-to", "", "--save-frequency", "0", "--log-every-n-steps", "100000", *extra,
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=6144, help="the longer run")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--big-batch", type=int, default=24576, help="0: skip that row (open_clip needs ~12 GiB)"
    )
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    b, w, big = args.batch, args.workers, args.big_batch
    n = max(b * w * (WARMUP_STEPS + 2), args.samples // (b * w) * (b * w))
    shards = make_shards(max(n, big))[: max(w, -(-max(n, big) // SHARD))]
    same_threads = {"OMP_NUM_THREADS": str(max(1, cores - w))}

    runs = {"vecap": [], "open_clip": [], "open_clip-threads": []}
    for _ in range(args.repeat):  # interleaved, best of: a shared machine's load comes and goes
        runs["vecap"].append(measure(vecap, shards, "vecap", n, b, w))
        runs["open_clip"].append(measure(open_clip, shards, "open_clip", n, b, w))
        runs["open_clip-threads"].append(
            measure(open_clip, shards, "open_clip-threads", n, b, w, env=same_threads)
        )
    (v_rate, _), (o_rate, _), (t_rate, _) = (max(r) for r in runs.values())
    # RSS moves by a few percent from run to run (allocator, prefetch queues): the
    # highest of each side's runs, with the spread shown
    v_all, o_all = (sorted(rss for _, rss in runs[k]) for k in ("vecap", "open_clip"))
    v_rss, o_rss = v_all[-1], o_all[-1]
    ckpt = ["--grad-checkpointing"]
    if big:
        _, v_big = measure(vecap, shards, "big-vecap", big, big, w, ckpt)
        _, o_big = measure(open_clip, shards, "big-open_clip", big, big, w, ckpt)
    stats = json.loads((WORK / ("big-vecap.json" if big else "vecap.json")).read_text())

    print(
        f"machine: {platform.machine()}, {cores} cores, Python {platform.python_version()}; "
        f"vecap loss: {stats.get('loss_impl')}, attention: {stats.get('attention')}"
    )
    print("| case | open_clip_train | vecap train | ratio | goal |")
    print("|---|---:|---:|---:|---:|")
    print(f"| samples/s, batch {b}, {w} worker(s) | {o_rate:,.0f} | {v_rate:,.0f} "
          f"| {v_rate / o_rate:.2f}× | ≥ 1.0× |")  # fmt: skip
    print(f"| samples/s, open_clip on {same_threads['OMP_NUM_THREADS']} compute thread(s) as vecap "
          f"| {t_rate:,.0f} | {v_rate:,.0f} | {v_rate / t_rate:.2f}× | |")  # fmt: skip
    print(f"| peak RSS MiB, batch {b}, highest of {args.repeat} runs (all runs) | {o_rss:,} "
          f"({', '.join(map(str, o_all))}) | {v_rss:,} ({', '.join(map(str, v_all))}) "
          f"| {v_rss / o_rss:.2f}× | ≤ 1.0× |")  # fmt: skip
    if big:
        print(f"| peak RSS MiB, batch {big:,}, grad ckpt | {o_big:,} | {v_big:,} "
              f"| {v_big / o_big:.2f}× | far below |")  # fmt: skip
    print(
        f"\nsamples/s: best of {args.repeat} interleaved runs of {n:,} samples, timed from step "
        f"{WARMUP_STEPS} to the last (per-step timestamps inside each trainer); "
        "RSS: the trainer's main process."
    )


if __name__ == "__main__":
    main()
