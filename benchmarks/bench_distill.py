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
    bk.one_op_main(__doc__, cpu_cases, cuda_cases, argv)


if __name__ == "__main__":
    main()
