"""`vecap caption --backend openai --workers 2` beside `--workers 1` (issue 16, goal >= 1.8x).

A fake OpenAI-compatible server (tests/openai_server.py: a real threading HTTP
server, in a process of its own) answers every chat completion after a fixed
--latency (50 ms), as a served model would; the images are Flickr8k JPEGs from
../shared when present, else generated ones, referenced from a JSONL pool.

Each round runs `vecap caption POOL --backend openai --concurrency C --workers W`
for W = 1 and 2, alternately (the machine may be shared), at the same
--concurrency: with W processes, W x C requests are in flight. The table shows
the median over --repeat rounds of images/s, two ways: over the run itself
(--stats `seconds`: reading, captioning and writing, workers started) and over
the whole command (process start and imports too), and the CPU time vecap
spent per image (all its processes). The outputs of 1 and 2 workers are
compared byte for byte.
"""

import argparse
import contextlib
import multiprocessing
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
FLICKR = REPO.parent / "shared" / "data" / "flickr8k" / "images"


def image_paths(work: Path, n: int) -> tuple[list[Path], str]:
    if FLICKR.is_dir():
        return sorted(FLICKR.glob("*.jpg"))[:n], "Flickr8k 128x128 JPEGs"
    from PIL import Image

    rng = random.Random(0)
    paths = []
    for i in range(n):
        path = work / f"{i}.jpg"
        noise = Image.frombytes("RGB", (32, 32), rng.randbytes(32 * 32 * 3))
        noise.resize((128, 128)).save(path, quality=90)  # smooth-ish, sized like Flickr8k's
        paths.append(path)
    return paths, "generated 128x128 JPEGs"


def _serve(latency: float, url_to, stop) -> None:
    from tests.openai_server import ChatServer, digest_answer

    with ChatServer(digest_answer, latency=latency) as server:
        url_to.send(server.url)
        with contextlib.suppress(EOFError):
            stop.recv()  # until the parent closes its end (or dies)


class Server:
    """The fake server in a process of its own: its threads do not share our cores'
    GIL with the benchmark's process, as a real server's would not."""

    def __init__(self, latency: float):
        context = multiprocessing.get_context("spawn")
        self._url_out, url_in = context.Pipe(duplex=False)
        stop_out, self._stop = context.Pipe(duplex=False)
        self._process = context.Process(
            target=_serve, args=(latency, url_in, stop_out), daemon=True
        )
        self._process.start()
        self.url = self._url_out.recv()

    def close(self) -> None:
        self._stop.close()
        self._process.join(timeout=10)
        if self._process.is_alive():
            self._process.kill()


def caption(
    pool: Path, out: Path, url: str, workers: int, concurrency: int
) -> tuple[float, float, float]:
    """(wall s of the command, s of the run as --stats counts them, CPU s of the
    command and its workers)."""
    stats = out.with_suffix(".stats.json")
    args = [
        sys.executable, "-m", "vecap_cli", "caption", str(pool), "--backend", "openai",
        "--model", "m", "--api-base", url, "--concurrency", str(concurrency),
        "--workers", str(workers), "-o", str(out), "--stats", str(stats), "-q",
    ]  # fmt: skip
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(args, check=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    counts = orjson.loads(stats.read_bytes())
    assert counts["out"] == counts["in"], counts  # every image captioned
    return wall, counts["seconds"], cpu


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[4, 16])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    load = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="vecap-bench-caption-workers-"))
    paths, kind = image_paths(work, args.images)
    pool = work / "pool.jsonl"
    pool.write_bytes(
        b"".join(orjson.dumps({"key": p.stem, "image": str(p)}) + b"\n" for p in paths)
    )
    n, w = len(paths), args.workers
    server = Server(args.latency)
    rows = []
    try:
        for concurrency in args.concurrency:
            runs: dict[int, list[tuple[float, float, float]]] = {1: [], w: []}
            for _ in range(args.repeat):
                for workers in (1, w):
                    out = work / f"c{concurrency}-w{workers}.jsonl"
                    runs[workers].append(caption(pool, out, server.url, workers, concurrency))
            same = (work / f"c{concurrency}-w1.jsonl").read_bytes() == (
                work / f"c{concurrency}-w{w}.jsonl"
            ).read_bytes()
            rows.append((concurrency, runs, same))
    finally:
        server.close()

    print(
        f"machine: {platform.machine()}, {len(os.sched_getaffinity(0))} usable cores, Python "
        f"{platform.python_version()}; load before: {load:.2f}; {n} {kind}; server latency "
        f"{args.latency * 1000:.0f} ms per request; median of {args.repeat} rounds"
    )
    print(
        "| --concurrency | --workers | images/s (run) | ratio | images/s (command) | ratio "
        "| goal | CPU ms/image | same bytes |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for concurrency, runs, same in rows:
        run_rate = {k: n / statistics.median(r[1] for r in v) for k, v in runs.items()}
        wall_rate = {k: n / statistics.median(r[0] for r in v) for k, v in runs.items()}
        cpu = {k: 1000 * statistics.median(r[2] for r in v) / n for k, v in runs.items()}
        for workers in (1, w):
            ratio = run_rate[workers] / run_rate[1]
            wall_ratio = wall_rate[workers] / wall_rate[1]
            print(
                f"| {concurrency} | {workers} | {run_rate[workers]:.1f} | {ratio:.2f} "
                f"| {wall_rate[workers]:.1f} | {wall_ratio:.2f} "
                f"| {'>= 1.8' if workers > 1 else ''} | {cpu[workers]:.2f} "
                f"| {'yes' if same else 'NO'} |"
            )
    print(
        f"load after: {os.getloadavg()[0]:.2f}. CPU: vecap and its workers, process start "
        "included; the server's is not."
    )
    print(
        f"Latency-bound, one process answers at most C / latency = "
        f"{', '.join(f'{c / args.latency:.0f}' for c in args.concurrency)} images/s "
        f"(C = {', '.join(map(str, args.concurrency))})."
    )


if __name__ == "__main__":
    main()
