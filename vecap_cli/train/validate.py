"""`--val DATA`: image-text retrieval on a held-out set while training, through
`vecap eval`'s own retrieval, so a run's val numbers are the ones `vecap eval`
(and clip_benchmark) report for its checkpoint."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import nn

from vecap_cli.errors import VecapError
from vecap_cli.stream.images import DEFAULT_LIMITS, ImageLimits
from vecap_cli.stream.runner import iter_samples
from vecap_cli.stream.sample import Sample
from vecap_cli.stream.tally import Tally

# eval's keys, as clip_benchmark names them, and the short names train logs
_NAMES = {"text_retrieval_recall@{k}": "i2t_r{k}", "image_retrieval_recall@{k}": "t2i_r{k}"}


def load_valset(inputs: Sequence[str], limit: int) -> list[Sample]:
    """The first `limit` records of `inputs`, held in memory; eval rejects the unusable."""
    samples = []
    for sample in iter_samples(inputs, Tally("val")):
        samples.append(sample)
        if len(samples) >= limit:
            break
    if not samples:
        raise VecapError(f"--val: no record in {', '.join(inputs)}")
    return samples


def retrieval(
    model: nn.Module,
    valset: list[Sample],
    transform: Callable,
    tokenizer: Callable,
    device,
    limits: ImageLimits = DEFAULT_LIMITS,
) -> dict[str, float]:
    """R@1 and R@5 both ways: `i2t_rK` (an image finds one of its captions), `t2i_rK`."""
    from vecap_cli.eval.tasks import evaluate_retrieval

    ks = (1, 5)
    scores = evaluate_retrieval(
        model, tokenizer, transform, valset, batch_size=256, device=device, ks=ks, workers=0,
        limits=limits,
    )  # fmt: skip
    return {
        short.format(k=k): scores[long.format(k=k)] for long, short in _NAMES.items() for k in ks
    }
