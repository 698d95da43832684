"""--n K, --temperature T, --seed: K sampled answers per record (caption, rewrite).

Draw i (0..K-1) of the record with key KEY is sampled at temperature T with the
seed `seed32(seed, "draw", KEY, i)`: the hf and openclip models draw each item
from a generator of its own seed (generate/sampling.py), a server gets the seed
in the request, and the answer cache keys each draw by it. So a record's draws
depend on (seed, key, i) alone: not on its neighbours, the batch size, the
shard or the number of workers. K = 1 at T = 0 is greedy decoding, as ever;
K >= 2 needs T > 0 (greedy decoding would give K identical answers).

With K = 1 the field holds one string; with K >= 2, a JSON list of the draws.
`ask` turns one batch of records into model calls: a record's K draws go in
calls of at most `chunk` draws, so a model's batch stays the size asked for.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from vecap_cli.rand import seed32

MIN_TEMPERATURE = 1e-3  # the lowest that samples: below it, greedy in all but overflow


@dataclass(frozen=True)
class Draws:
    n: int = 1
    temperature: float = 0.0
    seed: int = 0

    def __post_init__(self):
        if self.n < 1:
            raise ValueError(f"--n {self.n}: a record needs at least one draw")
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise ValueError(f"--temperature {self.temperature}: expected a number >= 0")
        if 0 < self.temperature < MIN_TEMPERATURE:  # scores / T overflow to inf, then NaN
            raise ValueError(
                f"--temperature {self.temperature}: below {MIN_TEMPERATURE} sampling is "
                "greedy decoding, or overflows: use 0 for greedy"
            )
        if self.n >= 2 and self.temperature == 0:
            raise ValueError(
                f"{self.n} draws need --temperature above 0: greedy decoding would give "
                f"{self.n} identical answers"
            )

    @property
    def sampled(self) -> bool:
        return self.temperature > 0

    def seeds(self, key: str) -> list[int]:
        """The seed of each of the record's draws, from (seed, key, i)."""
        return [seed32(self.seed, "draw", key, i) for i in range(self.n)]

    def identity(self) -> tuple:
        """What the draws add to a run's identity: nothing for one greedy answer (so a
        run keeps the identity it had before --n), else n, temperature and seed."""
        if not self.sampled:
            return ()
        return (("n", self.n), ("temperature", self.temperature), ("seed", self.seed))

    def value(self, texts: Sequence[str]) -> str | list[str]:
        """What the field holds: the one answer, or (--n >= 2) the list of them."""
        return texts[0] if self.n == 1 else list(texts)


def ask(
    generate: Callable[..., list],
    items: list[list[object]],
    keys: list[str],
    draws: Draws,
    chunk: int,
) -> list[list[object]]:
    """The answers to `items[r]` (record r's input for each of its draws), draws.n per
    record, in order. Greedy: one `generate(inputs)` call, as before --n existed;
    sampled: `generate(inputs, seeds=...)` in calls of at most `chunk` draws."""
    if not items:
        return []
    if not draws.sampled:
        return [[answer] for answer in generate([mine[0] for mine in items])]
    flat = [(item, seed) for mine, key in zip(items, keys, strict=True)
            for item, seed in zip(mine, draws.seeds(key), strict=True)]  # fmt: skip
    out: list = []
    for at in range(0, len(flat), chunk):
        part = flat[at : at + chunk]
        out.extend(generate([item for item, _ in part], seeds=[seed for _, seed in part]))
    n = draws.n
    return [out[r * n : (r + 1) * n] for r in range(len(items))]
