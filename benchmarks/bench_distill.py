"""The distillation loss, tiled beside dense: time and peak memory, forward + backward.

    python benchmarks/bench_distill.py [--quick] [--device cpu|cuda|all]

A student's B images and texts (D = 512) against a frozen teacher's (Dt = 768,
ViT-L/14's width), student logit scale 100, teacher 100 (MobileCLIP's).
`dense` is `distill_loss_reference`, which builds the (B, B) student and
teacher logits and their softmaxes; `vecap` is the tiled `distill_loss`.

- CPU: fp32, B = 4096 (issue 20's goals: time ≤ 1.3×, memory ≤ 1/5 of dense).
- CUDA (when a GPU is present): bench_kernels' distill rows, bf16, B = 16384
  and 32768 (`make gpu-check` runs them too).

Measurement as bench_kernels.py's (its workers run each case): a fresh process
per case, peak resident set above the inputs on CPU, `max_memory_allocated` on
CUDA; the best time of a few repetitions, dense and tiled alternating over
three rounds on CPU.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_kernels as bk  # a sibling script, not a package


def cpu_cases(quick: bool) -> list[bk.Case]:
    b = 1024 if quick else 4096
    return [
        bk.Case("distill", impl, "cpu", "float32", (b, 512, 768), False, 1, 2)
        for impl in ("dense", "vecap")
    ]


def cuda_cases(quick: bool) -> list[bk.Case]:
    return [case for case in bk.cuda_cases(quick) if case.op == "distill"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, to check the script")
    parser.add_argument("--device", choices=("cpu", "cuda", "all"), default="all")
    args = parser.parse_args(argv)

    import torch

    cases = cpu_cases(args.quick) if args.device in ("cpu", "all") else []
    if args.device in ("cuda", "all") and torch.cuda.is_available():
        cases += cuda_cases(args.quick)
    results = []
    for group in bk._paired(cases):
        merged: dict[bk.Case, dict] = {}
        for _ in range(3 if group[0].device == "cpu" else 1):  # alternate: load drifts
            for case in group:
                merged[case] = bk._better(merged.get(case), bk.run_case(case))
                print(f"{case.op} {case.impl} {case.shape}: {merged[case]}", file=sys.stderr)
        results += merged.items()
    print(bk.table(results))


if __name__ == "__main__":
    main()
