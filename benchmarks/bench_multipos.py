"""Multi-positive losses, tiled beside dense: time and peak memory, forward + backward.

    python benchmarks/bench_multipos.py [--quick] [--device cpu|cuda|all]

B images against B·K texts (K = 2), D = 512, logit_scale 100 (sigmoid: bias
−10). `dense` is the loss's torch reference, which builds the (B, B·K) logits
(`multipos_clip_loss_reference`, `multipos_siglip_loss_reference`); `vecap` is
the tiled loss (`multipos_clip_loss`, `multipos_siglip_loss`).

- CPU: fp32, B = 4096 (issue 19's goals: time ≤ 1.3×, memory ≤ 1/5 of dense).
- CUDA (when a GPU is present): bench_kernels' multi-positive rows, bf16,
  B = 8192 and 16384 (`make gpu-check` runs them too).

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
        bk.Case(op, impl, "cpu", "float32", (b, 2, 512), False, 1, 2)
        for op in bk.MULTIPOS
        for impl in ("dense", "vecap")
    ]


def cuda_cases(quick: bool) -> list[bk.Case]:
    return [case for case in bk.cuda_cases(quick) if case.op in bk.MULTIPOS]


def main(argv: list[str] | None = None) -> None:
    bk.one_op_main(__doc__, cpu_cases, cuda_cases, argv)


if __name__ == "__main__":
    main()
