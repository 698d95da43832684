"""`make gpu-check`: the core's whole GPU verification in one command and one table.

    python benchmarks/gpu_check.py [--budget-s 420] [--skip bench,train] [--cpu-smoke]

On a CUDA machine (meant to finish in under 8 minutes on one H100/H200):

1. parity: the Triton kernels compiled (TRITON_INTERPRET=0) on CUDA tensors
   against the fp64 torch references, in fp32, bf16 and fp16: CLIP loss (one
   process, and one rank's local form), SigLIP loss (label offset, the
   negative-only block), the multi-positive CLIP and SigLIP losses (K captions
   per image), the distillation loss (student D against a teacher's Dt),
   flash attention forward and backward; the odd shapes
   of the CPU tests and the real ones (ViT-B/16's N = 197; the text tower's
   N = 77, causal, with padded captions). Values and every gradient must be
   within the bound of tests/core (vecap_cli/core/parity.py).
2. bench: benchmarks/bench_kernels.py's CUDA rows, each in its own process:
   fused CLIP and SigLIP loss beside open_clip at B = 8k to 64k (bf16), the
   multi-positive losses (K = 2) beside their dense references at B = 8k, 16k, the
   distillation loss beside its dense reference at B = 16k, 32k (D 512, Dt 768), flash
   attention forward + backward beside SDPA in TFLOP/s; smallest first, and
   what does not fit the time budget is listed as skipped.
3. train: 50 steps of `vecap train` on ViT-B-16, synthetic 224 px JPEG shards,
   bf16, with the fused kernels (the core's loss, --attn fused) and without
   (open_clip's loss, --attn sdpa): median step time (forward, backward and
   optimizer, data wait excluded) and peak GPU memory.

One markdown table goes to stdout, progress to stderr. The exit status is 1
when a parity check fails or a part breaks, else 0. Without CUDA it prints
"no CUDA: skipped" and exits 0. --cpu-smoke runs every part on the CPU with
tiny sizes through the torch path: a check of the script itself (tests run it).
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import os
import random
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCH_DIR = Path(__file__).resolve().parent
SKIP_LINE = "no CUDA: skipped (make gpu-check needs a CUDA device; torch sees none)"
DTYPES = ("float32", "bfloat16", "float16")
SHORT = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


@dataclass
class Row:
    part: str
    case: str
    dtype: str
    shape: str
    status: str  # PASS | FAIL | ok | OOM | skipped … | ERROR …
    detail: str = ""
    time: str = "–"
    peak: str = "–"

    @property
    def failed(self) -> bool:
        return self.status == "FAIL" or self.status.startswith("ERROR")


@dataclass
class Budget:
    seconds: float
    start: float = field(default_factory=time.monotonic)

    def left(self) -> float:
        return self.seconds - (time.monotonic() - self.start)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- 1. parity ----------------------------------------------------------------------


@dataclass(frozen=True)
class Spec:
    """One parity case: op, shape and the labels its table row shows."""

    # clip | clip_local | siglip | siglip_offset | siglip_negative | multipos[_siglip][_local]
    # | distill | attention
    op: str
    # (B, D) / (b, n, D) / multipos (B, K, D), _local (b, ranks, K, D) / distill (B, D, Dt)
    # / attention (B, H, Nq, Nk, d)
    shape: tuple[int, ...]
    kind: str = "odd"  # odd (the CPU tests' shapes) | real
    causal: bool = False
    padded: bool = False


def parity_specs(smoke: bool) -> list[Spec]:
    if smoke:
        return [
            Spec("clip", (5, 16)),
            Spec("clip_local", (3, 9, 16)),
            Spec("siglip", (5, 16)),
            Spec("siglip_offset", (3, 9, 16)),
            Spec("siglip_negative", (5, 7, 16)),
            Spec("multipos", (5, 2, 16)),
            Spec("multipos_siglip", (5, 2, 16)),
            Spec("distill", (5, 16, 12)),
            Spec("multipos_local", (3, 2, 2, 16)),
            Spec("multipos_siglip_local", (3, 2, 2, 16)),
            Spec("attention", (1, 2, 9, 9, 16), causal=True, padded=True),
        ]
    losses = [(1, 64), (37, 512), (70, 768)]
    specs = [Spec(op, s) for op in ("clip", "siglip") for s in losses]
    specs += [Spec(op, (4096, 512), "real") for op in ("clip", "siglip")]
    specs += [
        Spec("clip_local", (21, 63, 64)),
        Spec("siglip_offset", (21, 63, 64)),
        Spec("siglip_negative", (37, 37, 64)),
        Spec("siglip_negative", (19, 11, 64)),
    ]
    specs += [
        Spec(op, shape, kind)
        for op in ("multipos", "multipos_siglip")
        for shape, kind in (
            ((1, 3, 64), "odd"),
            ((37, 2, 512), "odd"),
            ((70, 3, 768), "odd"),
            ((4096, 2, 512), "real"),
        )
    ]
    specs += [
        Spec("distill", shape, kind)
        for shape, kind in (
            ((1, 64, 32), "odd"),
            ((37, 33, 20), "odd"),
            ((70, 512, 768), "odd"),
            ((4096, 512, 768), "real"),
        )
    ]
    specs += [  # one rank of 8 (the last: the largest label offset) against the gathered batch
        Spec(op, shape, kind)
        for op in ("multipos_local", "multipos_siglip_local")
        for shape, kind in (((37, 3, 2, 512), "odd"), ((512, 8, 2, 512), "real"))
    ]
    attention = [  # tests/core/test_attention.py's shapes
        ((1, 2, 197, 197, 64), False),
        ((2, 3, 77, 77, 64), True),
        ((2, 2, 45, 197, 32), False),
        ((1, 2, 77, 30, 32), True),
        ((1, 1, 40, 40, 128), True),
        ((2, 1, 1, 1, 32), False),
    ]
    specs += [Spec("attention", s, causal=c) for s, c in attention]
    specs += [
        Spec("attention", (3, 2, 77, 77, 32), causal=True, padded=True),
        Spec("attention", (16, 12, 197, 197, 64), "real"),  # ViT-B/16
        Spec("attention", (16, 8, 77, 77, 64), "real", causal=True, padded=True),  # text
    ]
    return specs


def _unit_rows(torch, n, d, gen):
    x = torch.randn(n, d, generator=gen, dtype=torch.float64)
    return torch.nn.functional.normalize(x, dim=-1)


def _paired(torch, b, n, d, offset, seed=0):
    """Unit image rows (b, D), text rows (n, D): text offset+i a noisy copy of image i."""
    gen = torch.Generator().manual_seed(seed)
    image, text = _unit_rows(torch, b, d, gen), _unit_rows(torch, n, d, gen)
    noise = torch.randn(b, d, generator=gen, dtype=torch.float64)
    text[offset : offset + min(b, n - offset)] = torch.nn.functional.normalize(
        image[: n - offset] + 0.7 * noise[: n - offset], dim=-1
    )
    return image, text


def _leaves(tensors, dtype, device):
    return [t.detach().to(device=device, dtype=dtype).clone().requires_grad_(True) for t in tensors]


def _run_loss(spec: Spec, dtype, device: str, backend: str):
    """(ours, reference): lists of [loss, grads…] for one loss case."""
    import torch

    if spec.op.startswith("multipos"):
        return _run_multipos(torch, spec, dtype, device, backend)
    if spec.op == "distill":
        return _run_distill(torch, spec, dtype, device, backend)

    from vecap_cli.core.clip import clip_loss, clip_loss_local, clip_loss_reference
    from vecap_cli.core.siglip import siglip_loss, siglip_loss_reference

    f64 = torch.float64
    if spec.op in ("clip", "siglip"):
        (b, d), n, offset = spec.shape, spec.shape[0], 0
    else:
        b, n, d = spec.shape
        offset = n - b if spec.op != "siglip_negative" else 0
    image, text = _paired(torch, b, n, d, offset)
    scale, bias = torch.tensor(100.0, dtype=f64), torch.tensor(-10.0, dtype=f64)
    if spec.op == "clip_local":  # this rank's rows and all ranks' gathered rows
        gen = torch.Generator().manual_seed(1)
        all_image = _unit_rows(torch, n, d, gen)
        all_image[offset:] = image
        base = [image, text[offset:], all_image, text, scale]
    elif spec.op == "clip":  # CLIP trains without a bias (and ignores one: softmax)
        base = [image, text, scale]
    else:
        base = [image, text, scale, bias]

    def run(inputs, fn):
        loss = fn(*inputs)
        loss.backward()
        return [loss] + [t.grad for t in inputs]

    def ours_fn(*a):
        if spec.op == "clip":
            return clip_loss(a[0], a[1], a[2], backend=backend)
        if spec.op == "clip_local":
            return clip_loss_local(*a, label_offset=offset, backend=backend)
        if spec.op == "siglip_negative":
            return siglip_loss(*a, negative_only=True, backend=backend)
        return siglip_loss(*a, label_offset=offset, backend=backend)

    def ref_fn(*a):
        if spec.op == "clip":
            return clip_loss_reference(a[0], a[1], a[2])
        if spec.op == "clip_local":
            return _clip_local_reference(torch, *a, offset)
        if spec.op == "siglip_negative":
            return siglip_loss_reference(*a, negative_only=True)
        return siglip_loss_reference(*a, label_offset=offset)

    features = 2 if spec.op != "clip_local" else 4
    ours_in = _leaves(base[:features], dtype, device) + _leaves(
        base[features:], torch.float32, device
    )
    ref_in = _leaves(
        [t.to(dtype) for t in base[:features]] + [t.float() for t in base[features:]], f64, device
    )
    return run(ours_in, ours_fn), run(ref_in, ref_fn)


def _run_multipos(torch, spec: Spec, dtype, device: str, backend: str):
    """A multi-positive loss: B images, B·K texts, text j a noisy copy of image j // K."""
    from vecap_cli.core import multipos

    if spec.op.endswith("_local"):
        return _run_multipos_local(torch, spec, dtype, device, backend)
    b, k, d = spec.shape
    image, _ = _paired(torch, b, b, d, 0)
    gen = torch.Generator().manual_seed(2)
    noise = torch.randn(b * k, d, generator=gen, dtype=torch.float64)
    text = torch.nn.functional.normalize(image.repeat_interleave(k, 0) + 0.7 * noise, dim=-1)
    params = [torch.tensor(100.0)] + ([torch.tensor(-10.0)] if "siglip" in spec.op else [])
    ours = _leaves([image, text], dtype, device) + _leaves(params, torch.float32, device)
    ref = _leaves([image.to(dtype), text.to(dtype), *params], torch.float64, device)
    name = "multipos_siglip_loss" if "siglip" in spec.op else "multipos_clip_loss"
    out = []
    for inputs, loss in (
        (ours, getattr(multipos, name)(*ours, positives=k, backend=backend)),
        (ref, getattr(multipos, name + "_reference")(*ref, k)),
    ):
        loss.backward()
        out.append([loss] + [t.grad for t in inputs])
    return out


def _run_distill(torch, spec: Spec, dtype, device: str, backend: str):
    """The distillation loss: student pairs (B, D) against a teacher's (B, Dt), scales 10
    and 20 so neither softmax is one-hot; gradients of the student and its scale."""
    from vecap_cli.core.distill import distill_loss, distill_loss_reference

    b, d, dt = spec.shape
    image, text = _paired(torch, b, b, d, 0)
    t_image, t_text = _paired(torch, b, b, dt, 0, seed=3)
    teacher = [t.to(dtype).to(device) for t in (t_image, t_text)]
    ours = _leaves([image, text], dtype, device) + _leaves(
        [torch.tensor(10.0)], torch.float32, device
    )
    ref = _leaves([image.to(dtype), text.to(dtype), torch.tensor(10.0)], torch.float64, device)
    out = []
    for inputs, loss in (
        (ours, distill_loss(*ours, *teacher, 20.0, backend=backend)),
        (ref, distill_loss_reference(*ref, *(t.double() for t in teacher), 20.0)),
    ):
        loss.backward()
        out.append([loss] + [t.grad for t in inputs])
    return out


def _run_multipos_local(torch, spec: Spec, dtype, device: str, backend: str):
    """The last of `ranks` ranks' multi-positive loss: its b images and b·K texts against
    all ranks' gathered ones (separate leaves, as after the gather)."""
    from vecap_cli.core import multipos

    b, ranks, k, d = spec.shape
    offset = (ranks - 1) * b
    image, _ = _paired(torch, b * ranks, b * ranks, d, 0)
    gen = torch.Generator().manual_seed(2)
    noise = torch.randn(b * ranks * k, d, generator=gen, dtype=torch.float64)
    text = torch.nn.functional.normalize(image.repeat_interleave(k, 0) + 0.7 * noise, dim=-1)
    sigmoid = "siglip" in spec.op
    if sigmoid:
        base, params = [image[offset:], text], [torch.tensor(100.0), torch.tensor(-10.0)]
    else:
        base, params = [image[offset:], text[offset * k :], image, text], [torch.tensor(100.0)]
    ours_in = _leaves(base, dtype, device) + _leaves(params, torch.float32, device)
    ref_in = _leaves([t.to(dtype) for t in base] + params, torch.float64, device)
    if sigmoid:
        ours = multipos.multipos_siglip_loss(
            *ours_in, positives=k, label_offset=offset, backend=backend
        )
    else:
        ours = multipos.multipos_clip_loss_local(
            *ours_in, positives=k, label_offset=offset, backend=backend
        )
    ref = _multipos_local_reference(torch, ref_in, k, offset, sigmoid)
    out = []
    for inputs, loss in ((ours_in, ours), (ref_in, ref)):
        loss.backward()
        out.append([loss] + [t.grad for t in inputs])
    return out


def _multipos_local_reference(torch, inputs, k, offset, sigmoid):
    """One rank's multi-positive loss written out densely (b × B·K logits, fp64)."""
    functional = torch.nn.functional
    if sigmoid:
        image, all_text, scale, bias = inputs
        logits = scale * image @ all_text.T + bias  # (b, BK)
        rows = torch.arange(image.shape[0], device=image.device)[:, None] + offset
        cols = torch.arange(all_text.shape[0], device=image.device)[None, :] // k
        signs = (rows == cols) * 2.0 - 1.0
        return -functional.logsigmoid(signs * logits).sum() / image.shape[0]
    image, text, all_image, all_text, scale = inputs
    b = image.shape[0]
    log_p = functional.log_softmax(scale * image @ all_text.T, dim=1)  # (b, BK)
    arange = functools.partial(torch.arange, device=image.device)
    own = (arange(b) + offset)[:, None] * k + arange(k)  # (b, K): each image's texts
    per_image = -log_p.gather(1, own).mean()
    labels = arange(b * k) // k + offset
    per_text = functional.cross_entropy(scale * text @ all_image.T, labels)
    return (per_image + per_text) / 2


def _clip_local_reference(torch, image, text, all_image, all_text, scale, offset):
    """open_clip's local-loss ClipLoss on one rank, written out (B×B logits, fp64)."""
    cross_entropy = torch.nn.functional.cross_entropy
    labels = torch.arange(image.shape[0], device=image.device) + offset
    per_image = cross_entropy(scale * image @ all_text.T, labels)
    per_text = cross_entropy(scale * text @ all_image.T, labels)
    return (per_image + per_text) / 2


def _run_attention(spec: Spec, dtype, device: str, backend: str):
    import torch

    from vecap_cli.core.attention import attention_reference, flash_attention

    b, h, nq, nk, d = spec.shape
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(b, h, n, d, generator=gen) for n in (nq, nk, nk))
    grad_out = torch.randn(b, h, nq, d, generator=gen)
    mask = None
    if spec.padded:  # captions of assorted lengths, padded to N
        lengths = torch.randint(1, nk + 1, (b,), generator=gen)
        lengths[0] = nk // 2 + 1
        mask = (torch.arange(nk)[None, :] >= lengths[:, None]).to(device)
    ours_in = _leaves([q, k, v], dtype, device)
    ref_in = _leaves([t.to(dtype) for t in (q, k, v)], torch.float64, device)
    out = flash_attention(*ours_in, causal=spec.causal, key_padding_mask=mask, backend=backend)
    out.backward(grad_out.to(device=device, dtype=dtype))
    ref = attention_reference(*ref_in, causal=spec.causal, key_padding_mask=mask)
    ref.backward(grad_out.to(dtype).to(device=device, dtype=torch.float64))
    return [out] + [t.grad for t in ours_in], [ref] + [t.grad for t in ref_in]


def check_parity(spec: Spec, dtype_name: str, device: str, backend: str) -> float:
    """The worst ‖diff‖ / bound over the outputs and gradients (≤ 1 passes)."""
    import torch

    from vecap_cli.core.parity import ATTN_TOL, LOSS_TOL, parity

    dtype = getattr(torch, dtype_name)
    if spec.op == "attention":
        ours, ref = _run_attention(spec, dtype, device, backend)
        rtol = ATTN_TOL[dtype]
    else:
        ours, ref = _run_loss(spec, dtype, device, backend)
        rtol = LOSS_TOL[dtype]
    worst = 0.0
    for got, want in zip(ours, ref, strict=True):
        if not torch.isfinite(got).all():
            return float("inf")
        diff, bound = parity(got, want, rtol, dtype)
        worst = max(worst, diff / bound)
    return worst


def _describe(spec: Spec) -> tuple[str, str]:
    names = {
        "clip": "CLIP loss",
        "clip_local": "CLIP loss, local (rows vs gathered)",
        "siglip": "SigLIP loss",
        "siglip_offset": "SigLIP loss, label offset",
        "siglip_negative": "SigLIP loss, negative_only",
        "multipos": "multi-positive CLIP loss",
        "multipos_siglip": "multi-positive sigmoid loss",
        "distill": "distillation loss",
        "multipos_local": "multi-positive CLIP loss, one rank (local)",
        "multipos_siglip_local": "multi-positive sigmoid loss, one rank",
        "attention": "attention fwd+bwd",
    }
    case = f"{names[spec.op]} ({spec.kind})"
    if spec.op == "attention":
        b, h, nq, nk, d = spec.shape
        shape = f"B{b} H{h} N{nq}" + (f"×{nk}" if nk != nq else "") + f" d{d}"
        shape += " causal" * spec.causal + " padded" * spec.padded
    elif spec.op.endswith("_local") and spec.op.startswith("multipos"):
        b, ranks, k, d = spec.shape
        shape = f"b{b} of {ranks} ranks, K{k} D{d}"
    elif spec.op.startswith("multipos"):
        b, k, d = spec.shape
        shape = f"B{b} K{k} D{d}"
    elif spec.op == "distill":
        b, d, dt = spec.shape
        shape = f"B{b} D{d} teacher D{dt}"
    elif len(spec.shape) == 3:
        b, n, d = spec.shape
        shape = f"{b} rows × {n} cols, D{d}"
    else:
        shape = f"B{spec.shape[0]} D{spec.shape[1]}"
    return case, shape


def parity_rows(smoke: bool, device: str, backend: str) -> list[Row]:
    dtypes = DTYPES[:2] if smoke else DTYPES
    rows = []
    for spec in parity_specs(smoke):
        case, shape = _describe(spec)
        ratios, error = {}, ""
        for dtype in dtypes:
            try:
                ratios[dtype] = check_parity(spec, dtype, device, backend)
            except Exception as err:  # a compile or launch failure is a result here
                error = f"{SHORT[dtype]}: {type(err).__name__}: {str(err).splitlines()[0][:80]}"
                break
        worst = " · ".join(f"{SHORT[k]} {v:.2g}" for k, v in ratios.items())
        if error:
            status, detail = "ERROR", error
        else:
            status = "PASS" if all(r <= 1.0 for r in ratios.values()) else "FAIL"
            detail = f"‖diff‖/bound {worst}"
        log(f"parity {case} {shape}: {status} {detail}")
        rows.append(Row("parity", case, "/".join(SHORT[d] for d in dtypes), shape, status, detail))
    return rows


# -- 2. bench_kernels' rows ------------------------------------------------------------


def _bench_module():
    sys.path.insert(0, str(BENCH_DIR))
    try:
        import bench_kernels
    finally:
        sys.path.remove(str(BENCH_DIR))
    return bench_kernels


def bench_cases(smoke: bool):
    bk = _bench_module()
    if smoke:
        cases = [
            bk.Case(op, impl, "cpu", "float32", (256, 32), False, 0, 1)
            for op in ("clip", "siglip")
            for impl in ("open_clip", "vecap")
        ]
        cases += [
            bk.Case("attention", impl, "cpu", "float32", (1, 2, 33, 16), True, 0, 1)
            for impl in ("sdpa", "vecap")
        ]
        return cases
    return bk.cuda_cases(quick=False)


def bench_rows(smoke: bool, budget: Budget) -> list[Row]:
    bk = _bench_module()
    groups = bk._paired(bench_cases(smoke))
    # attention first (four short rows), then the losses smallest batch first: what a
    # tight budget leaves out is the largest batches
    groups.sort(key=lambda g: (g[0].op != "attention", g[0].shape[0], g[0].op))
    results, last_wall = [], 0.0
    for group in groups:
        if budget.left() < max(2 * last_wall, 5.0):
            results += [(case, {"status": "skipped (time budget)"}) for case in group]
            continue
        start = time.monotonic()
        for case in group:
            res = bk.run_case(case)
            log(f"bench {case.op} {case.impl} {case.shape}: {res}")
            results.append((case, res))
        last_wall = time.monotonic() - start
    return _bench_table_rows(bk, results)


def _bench_table_rows(bk, results) -> list[Row]:
    base = {bk._group(c): r for c, r in results if c.impl in bk.BASELINES}
    rows = []
    for case, res in results:
        ok = res.get("status") == "ok"
        shape = "×".join(map(str, case.shape)) + (" causal" if case.causal else "")
        detail = []
        ref = base.get(bk._group(case), {})
        if case.impl not in bk.BASELINES and ok and ref.get("status") == "ok":
            detail.append(f"time {res['time'] / ref['time']:.2f}× base")
            detail.append(f"memory {res['peak'] / max(ref['peak'], 1):.3f}× base")
        if case.op == "attention" and ok:
            detail.append(f"{bk.attention_flops(case) / res['time'] / 1e12:.1f} TFLOP/s")
        status = res.get("status", "?")
        if status.startswith("failed") and case.impl not in bk.BASELINES:
            status = "ERROR " + status  # ours broke: a failure of the check
        rows.append(
            Row(
                "bench",
                f"{case.op} loss, {case.impl}"
                if case.op != "attention"
                else f"attention, {case.impl}",
                SHORT.get(case.dtype, case.dtype),
                shape,
                status,
                ", ".join(detail),
                bk._fmt_time(res["time"]) if ok else "–",
                f"{res['peak'] / 2**20:,.0f}" if ok else "–",
            )
        )
    return rows


# -- 3. vecap train, fused and not ----------------------------------------------------

# Runs `vecap train` with each optimizer step timed (synchronized, so data waits are
# out) and the peak memory written at exit; GPU_CHECK_UNFUSED=1 trains on open_clip's
# own losses instead of the core's.
TRAIN_WRAPPER = """
import atexit, functools, json, os, resource, sys, time
import torch
import vecap_cli.train.loop as loop
if os.environ.get("GPU_CHECK_UNFUSED") == "1":
    loop.make_loss = functools.partial(loop.make_loss, fused=False)
steps = []
step = loop.train_step
cuda = torch.cuda.is_available()
def timed(*args, **kwargs):
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = step(*args, **kwargs)  # ends in loss.item(): synchronized
    steps.append(time.perf_counter() - start)
    return out
loop.train_step = timed
def report():
    peak = torch.cuda.max_memory_allocated() if cuda else (
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    with open(os.environ["GPU_CHECK_OUT"], "w") as f:
        json.dump({"steps": steps, "peak": peak}, f)
atexit.register(report)
from vecap_cli.cli.app import main
main(sys.argv[1:])
"""


@dataclass(frozen=True)
class TrainPlan:
    model: str
    batch: int
    steps: int
    size: int  # image side, px
    precision: str
    device: str
    workers: int


def train_plan(smoke: bool) -> TrainPlan:
    if smoke:
        return TrainPlan("vecap-tiny", 8, 3, 32, "fp32", "cpu", 1)
    workers = max(1, min(12, (os.cpu_count() or 4) - 2))
    return TrainPlan("ViT-B-16", 256, 50, 224, "bf16", "cuda", workers)


def write_shards(directory: Path, n: int, size: int, per_shard: int = 1024) -> list[Path]:
    """n samples (jpg + txt) in tar shards: 64 distinct smooth random images, reused."""
    from PIL import Image

    rng = random.Random(0)
    images = []
    for _ in range(64):
        small = Image.frombytes("RGB", (8, 8), rng.randbytes(8 * 8 * 3))
        buf = io.BytesIO()
        small.resize((size, size), Image.BILINEAR).save(buf, format="JPEG", quality=90)
        images.append(buf.getvalue())
    words = ["a", "photo", "of", "red", "blue", "green", "cube", "ball", "dog", "on", "table"]
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for s in range(-(-n // per_shard)):
        path = directory / f"{s:05d}.tar"
        with tarfile.open(path, "w") as tar:
            for i in range(s * per_shard, min(n, (s + 1) * per_shard)):
                caption = " ".join(rng.choices(words, k=rng.randint(3, 12))).encode()
                for ext, data in (("jpg", images[i % len(images)]), ("txt", caption)):
                    info = tarfile.TarInfo(f"{i:08d}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        paths.append(path)
    return paths


def run_train(plan: TrainPlan, shards: list[Path], work: Path, fused: bool, timeout: float) -> dict:
    name = "fused" if fused else "unfused"
    out = work / f"out-{name}"
    report = work / f"{name}.json"
    stats = work / f"{name}.stats.json"
    cmd = [
        sys.executable, "-c", TRAIN_WRAPPER, "train", *map(str, shards), "-o", str(out),
        "--model", plan.model, "--batch-size", str(plan.batch),
        "--train-num-samples", str(plan.batch * plan.steps), "--workers", str(plan.workers),
        "--precision", plan.precision, "--device", plan.device, "--warmup", "5",
        "--attn", "fused" if fused else "sdpa", "--log-every", "1000000", "-q",
        "--stats", str(stats),
    ]  # fmt: skip
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        "GPU_CHECK_OUT": str(report),
        "GPU_CHECK_UNFUSED": "0" if fused else "1",
        "HF_HUB_OFFLINE": "1",
    }
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"status": f"ERROR: no end within {timeout:.0f} s"}
    if proc.returncode != 0 or not report.exists():
        tail = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
        return {"status": f"ERROR: {tail[:100]}"}
    result = json.loads(report.read_text())
    result["stats"] = json.loads(stats.read_text()) if stats.exists() else {}
    result["status"] = "ok"
    return result


def train_rows(smoke: bool, budget: Budget) -> list[Row]:
    plan = train_plan(smoke)
    shape = f"B{plan.batch} × {plan.steps} steps, {plan.size} px"
    rows = []
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        work = Path(tmp)
        shards = write_shards(work / "shards", plan.batch * plan.steps, plan.size)
        results = {}
        for fused in (True, False):
            label = (
                "fused (core loss, --attn fused)"
                if fused
                else "unfused (open_clip loss, --attn sdpa)"
            )
            if budget.left() < 20:
                results[fused] = {"status": "skipped (time budget)"}
            else:
                results[fused] = run_train(plan, shards, work, fused, max(budget.left(), 60))
            res = results[fused]
            log(f"train {label}: {res.get('status')}")
            detail, step_time, peak = "", "–", "–"
            if res["status"] == "ok":
                timed = sorted(res["steps"][min(5, len(res["steps"]) - 1) :])  # past the warmup
                median = timed[len(timed) // 2]
                step_time = f"{median * 1e3:.1f} ms"
                peak = f"{res['peak'] / 2**20:,.0f}"
                stats = res.get("stats", {})
                detail = (
                    f"{len(res['steps'])} steps, {plan.batch / median:,.0f} samples/s compute; "
                    f"loss {stats.get('loss_impl', '?')}, attention {stats.get('attention', '?')}"
                )
                if not fused and results[True].get("status") == "ok":
                    other = sorted(
                        results[True]["steps"][min(5, len(results[True]["steps"]) - 1) :]
                    )
                    ratio = other[len(other) // 2] / median
                    detail += f"; fused step time {ratio:.2f}× this"
            rows.append(
                Row(
                    "train",
                    f"{plan.model} {label}",
                    plan.precision,
                    shape,
                    res["status"],
                    detail,
                    step_time,
                    peak,
                )
            )
    return rows


# -- the table ----------------------------------------------------------------------


def table(rows: list[Row]) -> str:
    lines = [
        "| part | case | dtype | shape | status | detail | time | peak MiB |",
        "|---|---|---|---|---|---|---:|---:|",
    ]
    for r in rows:
        cells = [r.part, r.case, r.dtype, r.shape, r.status, r.detail, r.time, r.peak]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--budget-s",
        type=float,
        default=420.0,
        help="seconds for all parts; bench rows fill the rest",
    )
    parser.add_argument("--skip", default="", help="parts to leave out: parity,bench,train")
    parser.add_argument(
        "--cpu-smoke", action="store_true", help="tiny sizes on the CPU's torch path"
    )
    args = parser.parse_args(argv)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    if unknown := skip - {"parity", "bench", "train"}:
        parser.error(f"--skip: unknown part(s) {', '.join(sorted(unknown))}")
    if not args.cpu_smoke:
        os.environ["TRITON_INTERPRET"] = "0"  # compiled kernels, before Triton is imported

    import torch

    if not args.cpu_smoke and not torch.cuda.is_available():
        print(SKIP_LINE)
        return 0
    budget = Budget(args.budget_s)
    device, backend = ("cpu", "torch") if args.cpu_smoke else ("cuda", "triton")
    if not args.cpu_smoke:
        log(f"{torch.cuda.get_device_name()}, torch {torch.__version__}")
    parts = {"parity": [], "bench": [], "train": []}
    if "parity" not in skip:
        parts["parity"] = parity_rows(args.cpu_smoke, device, backend)
    if "train" not in skip:  # before the bench rows, which fill the time that is left
        parts["train"] = train_rows(args.cpu_smoke, budget)
    if "bench" not in skip:
        parts["bench"] = bench_rows(args.cpu_smoke, budget)
    rows = parts["parity"] + parts["bench"] + parts["train"]
    print(table(rows))
    failed = [r for r in rows if r.failed]
    elapsed = args.budget_s - budget.left()
    log(
        f"{len(failed)} failure(s) in {len(rows)} rows; {elapsed:.0f} s"
        + (" (cpu smoke: torch path, tiny sizes)" if args.cpu_smoke else f" on {device}")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
