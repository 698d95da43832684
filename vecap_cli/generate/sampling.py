"""Seeded sampling for the in-process models: each row of a batch draws from its own seed.

transformers' `generate(do_sample=True)` draws every row from torch's one global
generator, so a row's tokens would depend on the rows beside it and on the batch
size. `SeededSampler` is a logits processor that draws instead: at each step it
takes row r's next token from softmax(scores / T) by inverting the row's
cumulative distribution at one uniform number from row r's own
`torch.Generator`, and leaves that token as the row's only finite score, so that
greedy decoding (`do_sample=False`) picks it. A row's draw then depends on its
seed and its own scores: the same in any batch, up to the float rounding that a
differently padded batch can bring to the scores (in fp32 on the CPU, the tests'
case, none that changes a token; in bf16 on a GPU, rarely one).

One number per row and step, drawn on the CPU whatever the device: the
softmax, the cumulative sum and the search run where the scores are, so a
sampled step costs about what a greedy one does (noise over the whole
vocabulary, Gumbel-max, took ~60 ms a step for 8 rows of a 152k vocabulary on
one core). The model's own processors (min length, repetition penalty from its
generation config) run before it, as they would before sampling. The CoCa loop
calls `pick`.
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
        u = torch.cat([torch.rand(1, generator=g) for g in self.generators])  # (B,)
        cdf = torch.softmax(scores.float() / self.temperature, dim=-1).cumsum(-1)  # (B, V)
        u = u.to(cdf.device)[:, None] * cdf[:, -1:]  # (B, 1): below the row's total
        # the first token whose cumulative probability passes u: a token of
        # probability 0 (a score of -inf) adds nothing to the sum, so it is never it
        chosen = torch.searchsorted(cdf, u, right=True)[:, 0]
        return chosen.clamp_max(scores.shape[1] - 1)

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
