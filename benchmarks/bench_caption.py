"""`vecap caption --backend hf` beside a per-image transformers loop (issue 7, goal >= 3x).

Same tiny random-weight LLaVA (CLIP vision tower + Llama, built from configs),
same images (Flickr8k JPEGs from ../shared when present, else generated ones),
same greedy generation of --new-tokens tokens, on CPU.

- peer: for each image, decode it, run the processor, one `generate`, decode
  the tokens: the loop people write first;
- vecap: the caption command's stream (`run_stream` over a JSONL file: read,
  decode in worker threads, batched generate, write JSONL), in this process
  with the model already loaded, as the peer has it.

Both are timed best of --repeat after a warm-up, with torch on --threads
threads (default 1: on a shared machine, OpenMP threads that wait on each other
make tiny-model steps 10-20x slower, for both sides alike). The CLI line adds
what a user also waits for: process start, imports and model load (not in the
ratio).
"""

import argparse
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import orjson

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
FLICKR = REPO.parent / "shared" / "data" / "flickr8k" / "images"
PROMPT = "Describe the image concisely, less than 20 words."


def image_paths(work: Path, n: int) -> list[Path]:
    if FLICKR.is_dir():
        return sorted(FLICKR.glob("*.jpg"))[:n]
    from PIL import Image

    rng = random.Random(0)
    paths = []
    for i in range(n):
        path = work / f"{i}.jpg"
        Image.frombytes("RGB", (128, 128), rng.randbytes(128 * 128 * 3)).save(path)
        paths.append(path)
    return paths


def per_image_loop(model_dir: Path, paths: list[Path], new_tokens: int):
    import torch
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(model_dir)
    model = AutoModelForImageTextToText.from_pretrained(model_dir).eval()
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPT}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def run():
        out = []
        for path in paths:
            image = Image.open(path).convert("RGB")
            inputs = processor(images=image, text=text, return_tensors="pt")
            with torch.inference_mode():
                ids = model.generate(**inputs, max_new_tokens=new_tokens, do_sample=False)
            new = ids[:, inputs["input_ids"].shape[1] :]
            out.append(processor.batch_decode(new, skip_special_tokens=True)[0])
        return out

    return run


def vecap_stream(model_dir: Path, pool: Path, out: Path, new_tokens: int, batch: int):
    from vecap_cli.generate.load import captioner
    from vecap_cli.steps.caption import CaptionConfig, caption
    from vecap_cli.stream.runner import StreamOptions, run_stream

    backend = captioner("hf", str(model_dir), PROMPT, new_tokens, device="cpu")
    backend.backend  # noqa: B018 -- load now: the peer's model is loaded before timing too
    config = CaptionConfig(model=str(model_dir), max_new_tokens=new_tokens, batch_size=batch)
    opts = StreamOptions(inputs=(str(pool),), output=str(out), quiet=True)

    def run():
        tally = run_stream("caption", opts, partial(caption, config=config, captioner=backend))
        assert tally.n_out == tally.n_in
        return [orjson.loads(line)["vec"] for line in out.read_bytes().splitlines()]

    return run


def best(fn, repeat: int) -> tuple[float, object]:
    result = fn()  # warm-up
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from vecap_cli.generate.hf_vlm import quiet_transformers

    quiet_transformers()

    from tests.tiny_models import save_tiny_llava

    with tempfile.TemporaryDirectory(prefix="vecap-bench-") as tmp:
        work = Path(tmp)
        model_dir = save_tiny_llava(
            work / "llava", hidden=args.hidden, layers=args.layers, image_size=64
        )
        paths = image_paths(work, args.images)
        pool = work / "pool.jsonl"
        pool.write_bytes(
            b"".join(
                orjson.dumps({"key": f"{i:06d}", "image": str(p)}) + b"\n"
                for i, p in enumerate(paths)
            )
        )
        t_loop, loop_out = best(per_image_loop(model_dir, paths, args.new_tokens), args.repeat)
        t_vecap, vecap_out = best(
            vecap_stream(model_dir, pool, work / "out.jsonl", args.new_tokens, args.batch_size),
            args.repeat,
        )
        same = sum(a == b for a, b in zip(loop_out, vecap_out, strict=True))
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "vecap_cli", "caption", str(pool), "--model", str(model_dir),
             "--max-new-tokens", str(args.new_tokens), "--batch-size", str(args.batch_size),
             "--device", "cpu", "-q", "-o", str(work / "cli.jsonl")],
            check=True,
            env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(args.threads)},
        )  # fmt: skip
        t_cli = time.perf_counter() - start

    n = len(paths)
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, torch {torch.__version__} ({torch.get_num_threads()} threads)"
    )
    print(
        f"model: tiny LLaVA (CLIP ViT + Llama, hidden {args.hidden}, {args.layers} layers, "
        f"random weights), {n} images "
        f"({'Flickr8k' if FLICKR.is_dir() else 'generated'} JPEGs), "
        f"{args.new_tokens} new tokens, greedy, CPU"
    )
    print("| case | images | per-image loop img/s | vecap img/s | ratio | goal |")
    print("|---|---:|---:|---:|---:|---:|")
    print(
        f"| caption --backend hf, batch {args.batch_size} | {n:,} | {n / t_loop:,.1f} | "
        f"{n / t_vecap:,.1f} | {t_loop / t_vecap:.2f} | >= 3 |"
    )
    print(
        f"\nvecap CLI end to end, with process start, imports and model load: {t_cli:.1f} s "
        f"({n / t_cli:,.1f} img/s). Captions identical to the loop's: {same}/{n}."
    )


if __name__ == "__main__":
    main()
