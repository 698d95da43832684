"""MetaCLIP balancing: p_e = min(1, t / count_e); a record is kept when any of its
matched entries passes its own draw, so P(keep) = 1 - prod(1 - p_e).

MetaCLIP draws with `random.random()`; here entry e's draw for a record is
`uniform(seed, key, e)`, so the kept set does not depend on how the pool is split,
ordered, or spread over workers.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from vecap_cli.rand import unit


def entry_probabilities(counts: Sequence[int], t: float) -> list[float]:
    """p_e per entry; an entry never counted gets 1 (MetaCLIP raises counts below t to t)."""
    return [t / c if c > t else 1.0 for c in counts]


class Balancer:
    """`balancer(key, ids)` -> (p, keep) for a record with matched entry ids."""

    def __init__(self, probs: list[float], seed: int):
        self.probs = probs
        self.seed = seed

    def probability(self, ids: Sequence[int]) -> float:
        """1 - prod(1 - p_e) over the matched entries, without a draw."""
        miss = 1.0
        for e in ids:
            miss *= 1.0 - self.probs[e]
        return 1.0 - miss if ids else 0.0

    def __call__(self, key: str | int, ids: Sequence[int]) -> tuple[float, bool]:
        probs = self.probs
        miss = 1.0
        for e in ids:
            pe = probs[e]
            if pe >= 1.0:
                return 1.0, True  # a tail entry: kept whatever the other draws say
            miss *= 1.0 - pe
        if not ids:
            return 0.0, False
        prefix = f"{self.seed}\x1f{key}\x1f"  # uniform(seed, key, e), its prefix built once
        keep = any(unit(f"{prefix}{e}") < probs[e] for e in ids)
        return 1.0 - miss, keep


def expected_kept(matched: Iterable[Sequence[int]], probs: Sequence[float]) -> list[float]:
    """Per entry, the expected number of kept records that match it: the sum of
    P(keep) = 1 - prod(1 - p_e) over its records. For a head entry this is t (its
    own draws) plus the records kept through their other entries: more than t."""
    kept = [0.0] * len(probs)
    for ids in matched:
        miss = 1.0
        for e in ids:
            miss *= 1.0 - probs[e]
        for e in ids:
            kept[e] += 1.0 - miss
    return kept


def head_tail(counts: Sequence[int], t: float) -> dict:
    """Entries with count >= t (the head, sub-sampled) and their share of all matches."""
    total = head_matches = head_entries = matched = 0
    for c in counts:
        if c:
            matched += 1
            total += c
            if c >= t:
                head_entries += 1
                head_matches += c
    share = head_matches / total if total else 0.0
    return {
        "entries_matched": matched,
        "matches": total,
        "head": {"entries": head_entries, "matches": head_matches, "share": round(share, 6)},
        "tail": {
            "entries": matched - head_entries,
            "matches": total - head_matches,
            "share": round(1 - share, 6) if total else 0.0,
        },
        "matches_capped_at_t": int(sum(min(c, t) for c in counts if c)),
    }
