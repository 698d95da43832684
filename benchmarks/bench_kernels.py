"""Core kernels beside open_clip and SDPA: time and peak memory, forward + backward.

    python benchmarks/bench_kernels.py [--quick] [--device cpu|cuda|all]

Runs unchanged on CPU and GPU and prints one markdown table.

- CPU (always): CLIP loss, fp32, D = 512, B = 4096, 16384, 32768: the tiled
  torch path (`FusedClipLoss`) beside open_clip's `ClipLoss`.
- CUDA (when a GPU is present): CLIP and SigLIP losses on Triton beside
  open_clip, bf16, B = 8k to 64k; flash attention forward + backward beside
  SDPA at ViT-B/16 (B=256, H=12, N=197, d=64) and the text tower (B=256, H=8,
  N=77, d=64, causal), in TFLOP/s.

Every measurement runs in a fresh process, so its peak memory is its own: on
CPU the peak resident set above the inputs (VmHWM after resetting it through
/proc/self/clear_refs), on CUDA `max_memory_allocated` above the inputs. A CPU
worker's address space is capped below the memory available when it starts,
so a baseline too big for the machine reports OOM instead of swapping it dead.
Times are the best of a few repetitions; at small sizes the baseline and ours
alternate over three rounds, since load on a shared host drifts.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BASELINES = {"open_clip", "sdpa", "dense"}
MULTIPOS = {"multipos": "multipos_clip_loss", "multipos_siglip": "multipos_siglip_loss"}


@dataclass(frozen=True)
class Case:
    op: str  # clip | siglip | multipos | multipos_siglip | distill | attention
    impl: str  # open_clip | vecap | sdpa | dense (the multi-positive and distill references)
    device: str
    dtype: str
    # (B, D) for losses, (B, K, D) multi-positive, (B, D, Dt) distill, (B, H, N, d) attention
    shape: tuple[int, ...]
    causal: bool = False
    warmup: int = 1
    reps: int = 3


# -- cases ------------------------------------------------------------------------


def _reps(device: str, b: int) -> tuple[int, int]:
    if device == "cuda":
        return 3, 10
    return (1, 3) if b <= 4096 else (0, 2) if b <= 16384 else (0, 1)


def cpu_cases(quick: bool) -> list[Case]:
    sizes = (1024, 2048) if quick else (4096, 16384, 32768)
    return [
        Case("clip", impl, "cpu", "float32", (b, 512), False, *_reps("cpu", b))
        for b in sizes
        for impl in ("open_clip", "vecap")
    ]


def cuda_cases(quick: bool) -> list[Case]:
    sizes = (8192,) if quick else (8192, 16384, 32768, 65536)
    cases = [
        Case(op, impl, "cuda", "bfloat16", (b, 512), False, *_reps("cuda", b))
        for op in ("clip", "siglip")
        for b in sizes
        for impl in ("open_clip", "vecap")
    ]
    cases += [  # K = 2 captions per image: B images against 2B texts
        Case(op, impl, "cuda", "bfloat16", (b, 2, 512), False, *_reps("cuda", b))
        for op in MULTIPOS
        for b in ((4096,) if quick else (8192, 16384))
        for impl in ("dense", "vecap")
    ]
    cases += [  # MobileCLIP's distillation: student D = 512 against a teacher's 768
        Case("distill", impl, "cuda", "bfloat16", (b, 512, 768), False, *_reps("cuda", b))
        for b in ((4096,) if quick else (16384, 32768))
        for impl in ("dense", "vecap")
    ]
    batch = 16 if quick else 256
    for shape, causal in (((batch, 12, 197, 64), False), ((batch, 8, 77, 64), True)):
        cases += [
            Case("attention", impl, "cuda", "bfloat16", shape, causal, *_reps("cuda", 0))
            for impl in ("sdpa", "vecap")
        ]
    return cases


# -- worker: one measurement in this process ----------------------------------------


def _open_clip_loss():
    """open_clip/loss.py alone: the package import costs seconds of torchvision/dynamo."""
    path = Path(importlib.util.find_spec("open_clip").origin).with_name("loss.py")
    spec = importlib.util.spec_from_file_location("_open_clip_loss", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _loss_step(case: Case, torch):
    if case.op in MULTIPOS:
        return _multipos_step(case, torch)
    if case.op == "distill":
        return _distill_step(case, torch)
    b, d = case.shape
    dtype = getattr(torch, case.dtype)
    gen = torch.Generator(device=case.device).manual_seed(0)

    def unit_rows():
        x = torch.randn(b, d, device=case.device, generator=gen)
        return torch.nn.functional.normalize(x, dim=-1).to(dtype).requires_grad_(True)

    image, text = unit_rows(), unit_rows()
    scale = torch.tensor(100.0, device=case.device, requires_grad=True)
    # CLIP trains without a bias; SigLIP starts from -10.
    bias = (
        torch.tensor(-10.0, device=case.device, requires_grad=True) if case.op == "siglip" else None
    )
    if case.impl == "open_clip":
        losses = _open_clip_loss()
        fn = losses.ClipLoss() if case.op == "clip" else losses.SigLipLoss()
    else:
        from vecap_cli.core import FusedClipLoss, FusedSigLipLoss

        fn = FusedClipLoss() if case.op == "clip" else FusedSigLipLoss()

    def step():
        image.grad = text.grad = scale.grad = None
        fn(image, text, scale, bias).backward()

    return step


def _multipos_step(case: Case, torch):
    """B images against B·K texts; `dense` is the loss's torch reference (B×BK logits)."""
    from vecap_cli.core import multipos

    b, k, d = case.shape
    gen = torch.Generator(device=case.device).manual_seed(0)

    def unit_rows(n):
        x = torch.randn(n, d, device=case.device, generator=gen)
        return torch.nn.functional.normalize(x, dim=-1).to(getattr(torch, case.dtype))

    image, text = unit_rows(b).requires_grad_(True), unit_rows(b * k).requires_grad_(True)
    scale = torch.tensor(100.0, device=case.device, requires_grad=True)
    bias = torch.tensor(-10.0, device=case.device, requires_grad=True)
    name = MULTIPOS[case.op]
    if case.impl == "dense":
        reference = getattr(multipos, name + "_reference")
        args = (scale, bias, k) if case.op == "multipos_siglip" else (scale, k)
    else:
        loss = getattr(multipos, name)
        args = (scale, bias) if case.op == "multipos_siglip" else (scale,)

    def step():
        image.grad = text.grad = scale.grad = bias.grad = None
        if case.impl == "dense":
            reference(image, text, *args).backward()
        else:
            loss(image, text, *args, positives=k).backward()

    return step


def _distill_step(case: Case, torch):
    """Student (B, D) against a frozen teacher's (B, Dt); `dense` is the loss's torch
    reference (B×B student and teacher logits), `vecap` the tiled loss."""
    from vecap_cli.core import distill

    b, d, dt = case.shape
    gen = torch.Generator(device=case.device).manual_seed(0)

    def unit_rows(n, d):
        x = torch.randn(n, d, device=case.device, generator=gen)
        return torch.nn.functional.normalize(x, dim=-1).to(getattr(torch, case.dtype))

    image, text = unit_rows(b, d).requires_grad_(True), unit_rows(b, d).requires_grad_(True)
    t_image, t_text = unit_rows(b, dt), unit_rows(b, dt)
    scale = torch.tensor(100.0, device=case.device, requires_grad=True)
    loss = distill.distill_loss_reference if case.impl == "dense" else distill.distill_loss

    def step():
        image.grad = text.grad = scale.grad = None
        loss(image, text, scale, t_image, t_text, distill.TEACHER_SCALE).backward()

    return step


def _attention_step(case: Case, torch):
    b, h, n, d = case.shape
    dtype = getattr(torch, case.dtype)
    q, k, v = (
        torch.randn(b, h, n, d, device=case.device, dtype=dtype, requires_grad=True)
        for _ in range(3)
    )
    grad_out = torch.randn(b, h, n, d, device=case.device, dtype=dtype)
    if case.impl == "sdpa":

        def attend():
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=case.causal)
    else:
        from vecap_cli.core import flash_attention

        def attend():
            return flash_attention(q, k, v, causal=case.causal)

    def step():
        q.grad = k.grad = v.grad = None
        attend().backward(grad_out)

    return step


def attention_flops(case: Case) -> float:
    """Forward + backward matmul FLOPs: 4·B·H·N²·d forward, 2.5× that backward."""
    b, h, n, d = case.shape
    return 3.5 * 4 * b * h * n * n * d * (0.5 if case.causal else 1.0)


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _cap_address_space() -> None:
    """Leave 20% of the memory available now to the rest of the machine."""
    meminfo = Path("/proc/meminfo").read_text().split()
    available = int(meminfo[meminfo.index("MemAvailable:") + 1]) * 1024
    limit = _status_kib("VmSize") * 1024 + int(0.8 * available)
    resource.setrlimit(resource.RLIMIT_AS, (limit, resource.RLIM_INFINITY))


class _PeakMemory:
    """Peak bytes above the level at construction: RSS on CPU, the allocator on CUDA."""

    def __init__(self, device: str, torch):
        self.device, self.torch = device, torch
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
            self.base = _status_kib("VmRSS") * 1024

    def peak(self) -> int:
        if self.device == "cuda":
            return self.torch.cuda.max_memory_allocated() - self.base
        return _status_kib("VmHWM") * 1024 - self.base


def measure(case: Case) -> dict:
    import torch

    if case.device == "cpu":
        _cap_address_space()
    make = _attention_step if case.op == "attention" else _loss_step
    step = make(case, torch)
    sync = torch.cuda.synchronize if case.device == "cuda" else (lambda: None)
    memory = _PeakMemory(case.device, torch)
    try:
        for _ in range(case.warmup):
            step()
        times = []
        for _ in range(case.reps):
            sync()
            start = time.perf_counter()
            step()
            sync()
            times.append(time.perf_counter() - start)
    except (RuntimeError, MemoryError) as err:  # CPU allocator failures and CUDA OOM
        if "memory" not in str(err).lower():
            raise
        return {"status": "OOM", "peak": memory.peak()}
    return {"status": "ok", "time": min(times), "peak": memory.peak()}


# -- parent: run every case in its own process, print the table ---------------------


def run_case(case: Case) -> dict:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(asdict(case))],
        capture_output=True,
        text=True,
        env=env,
    )
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        killed = proc.returncode < 0 or proc.returncode == 137
        tail = proc.stderr.strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
        return {"status": "OOM" if killed else f"failed: {tail[0][:60]}"}
    return json.loads(lines[-1])


def _rounds(case: Case) -> int:
    return 3 if case.device == "cpu" and case.shape[0] <= 4096 else 1


def _paired(cases: list[Case]) -> list[list[Case]]:
    groups: dict[tuple, list[Case]] = {}
    for case in cases:
        groups.setdefault(_group(case), []).append(case)
    return list(groups.values())


def _better(old: dict | None, new: dict) -> dict:
    """Best time over rounds, highest peak (the peak is a property of the case, not luck)."""
    if old is None or old.get("status") != "ok":
        return new
    if new.get("status") != "ok":
        return old
    return {
        "status": "ok",
        "time": min(old["time"], new["time"]),
        "peak": max(old["peak"], new["peak"]),
    }


def _group(case: Case) -> tuple:
    return (case.op, case.device, case.dtype, case.shape, case.causal)


def _fmt_time(seconds: float) -> str:
    return f"{seconds:.2f} s" if seconds >= 1 else f"{seconds * 1e3:.1f} ms"


def table(results: list[tuple[Case, dict]]) -> str:
    base = {_group(c): r for c, r in results if c.impl in BASELINES}
    rows = [
        "| op | impl | device | dtype | shape | fwd+bwd time | peak MiB | time vs base | memory vs base | TFLOP/s |",
        "|---|---|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for case, res in results:
        shape = "×".join(map(str, case.shape)) + (" causal" if case.causal else "")
        ok = res.get("status") == "ok"
        time_s = _fmt_time(res["time"]) if ok else res.get("status", "?")
        peak = f"{res['peak'] / 2**20:.0f}" if "peak" in res and ok else "–"
        ref = base.get(_group(case), {})
        vs_time = vs_mem = tflops = "–"
        if case.impl not in BASELINES and ok and ref.get("status") == "ok":
            vs_time = f"{res['time'] / ref['time']:.2f}×"
            vs_mem = f"{res['peak'] / max(ref['peak'], 1):.3f}×"
        elif case.impl not in BASELINES and ok:
            vs_time = vs_mem = f"base {ref.get('status', '–')}"
        if case.op == "attention" and ok:
            tflops = f"{attention_flops(case) / res['time'] / 1e12:.1f}"
        rows.append(
            f"| {case.op} | {case.impl} | {case.device} | {case.dtype} | {shape} | {time_s} "
            f"| {peak} | {vs_time} | {vs_mem} | {tflops} |"
        )
    return "\n".join(rows)


def one_op_main(
    doc: str,
    cpu: Callable[[bool], list[Case]],
    cuda: Callable[[bool], list[Case]],
    argv: list[str] | None = None,
) -> None:
    """The command line of a benchmark of one op (bench_multipos, bench_distill):
    its CPU and CUDA cases, each in a fresh process, paired cases alternating over
    three rounds on CPU (load drifts on shared hosts), then the table."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, to check the script")
    parser.add_argument("--device", choices=("cpu", "cuda", "all"), default="all")
    args = parser.parse_args(argv)

    import torch

    cases = cpu(args.quick) if args.device in ("cpu", "all") else []
    if args.device in ("cuda", "all") and torch.cuda.is_available():
        cases += cuda(args.quick)
    results = []
    for group in _paired(cases):
        merged: dict[Case, dict] = {}
        for _ in range(3 if group[0].device == "cpu" else 1):
            for case in group:
                merged[case] = _better(merged.get(case), run_case(case))
                print(f"{case.op} {case.impl} {case.shape}: {merged[case]}", file=sys.stderr)
        results += merged.items()
    print(table(results))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, to check the script")
    parser.add_argument("--device", choices=("cpu", "cuda", "all"), default="all")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        fields = json.loads(args.worker)
        print(json.dumps(measure(Case(**{**fields, "shape": tuple(fields["shape"])}))))
        return

    import torch  # the parent only asks whether there is a GPU

    cases = cpu_cases(args.quick) if args.device in ("cpu", "all") else []
    if args.device in ("cuda", "all") and torch.cuda.is_available():
        cases += cuda_cases(args.quick)
    results = []
    for group in _paired(cases):
        merged: dict[Case, dict] = {}
        for _ in range(_rounds(group[0])):  # alternate base and ours: load drifts on shared hosts
            for case in group:
                merged[case] = _better(merged.get(case), run_case(case))
                print(f"{case.op} {case.impl} {case.shape}: {merged[case]}", file=sys.stderr)
        results += merged.items()
    print(table(results))


if __name__ == "__main__":
    main()
