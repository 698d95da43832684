"""Seeded sampling for the in-process models: each row of a batch draws from its own seed.

transformers' `generate(do_sample=True)` draws every row from torch's one global
generator, so a row's tokens would depend on the rows beside it and on the batch
size. `SeededSampler` is a logits processor that draws instead: at each step it
takes row r's next token from softmax(scores / T) by the Gumbel-max trick,
argmax(scores / T - log E) with E ~ Exp(1) drawn from row r's own
`torch.Generator`, and leaves that token as the row's only finite score, so that
greedy decoding (`do_sample=False`) picks it. A row's draw then depends on its
seed and its own scores: the same in any batch, up to the float rounding that a
differently padded batch can bring to the scores (in fp32 on the CPU, the tests'
case, none that changes a token; in bf16 on a GPU, rarely one).

The model's own processors (min length, repetition penalty from its generation
config) run before it, as they would before sampling. The CoCa loop calls `pick`.
"""

from __future__ import annotations


class SeededSampler:
    def __init__(self, seeds: list[int], temperature: float):
        import torch

        if temperature <= 0:
            raise ValueError("sampling needs a temperature above 0")
        self.temperature = temperature
        self.generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
        self._torch = torch

    def pick(self, scores):
        """The next token of each row, drawn from its own generator: (B, V) -> (B,)."""
        torch = self._torch
        assert scores.shape[0] == len(self.generators), "one seed per row of the batch"
        vocab = scores.shape[1]
        noise = torch.stack(
            [torch.empty(vocab).exponential_(generator=g) for g in self.generators]
        )  # (B, V), on the CPU: a generator per row, whatever the device
        logits = scores.float() / self.temperature
        return (logits - noise.log().to(logits.device)).argmax(-1)

    def __call__(self, input_ids, scores):  # (B, T), (B, V) -> (B, V)
        chosen = self.pick(scores)
        out = self._torch.full_like(scores, float("-inf"))
        return out.scatter_(1, chosen[:, None], 0.0)


def processors(seeds: list[int] | None, temperature: float) -> dict:
    """`generate`'s keyword for seeded sampling (none for greedy decoding)."""
    if seeds is None or temperature <= 0:
        return {}
    from transformers import LogitsProcessorList

    return {"logits_processor": LogitsProcessorList([SeededSampler(seeds, temperature)])}
