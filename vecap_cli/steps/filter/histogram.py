"""The scores of a pool in fixed fine bins: small, exact to add up across ranks.

A score s in [-1, 1] falls in bin `floor((s + 1) / 2 * BINS)` (BINS = 2^16: bins
3.05e-5 wide; scores outside are clamped to the end bins). `vecap filter score`
counts every score it writes, per rank; the files add up bin by bin in any order,
so the merged histogram is the one a single process would count.

The top fraction F of N scores is then every record whose bin is at or above the
bin holding the k-th highest score, k = ceil(F * N). That is exactly the k
records a sort would keep when no two of the top k + 1 scores share a bin; when
scores tie in the threshold bin (the same score, or scores closer than a bin),
all of them are kept, so the count can go over k by those ties, never under.
Select compares bins, never floats against an edge, so both passes agree on
which bin a score is in.
"""

from __future__ import annotations

import glob
import math
import os
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import orjson

from vecap_cli.errors import VecapError

BINS = 1 << 16
LOW, HIGH = -1.0, 1.0
KIND = "vecap-filter-histogram"


def bin_of(score: float) -> int:
    at = math.floor((score - LOW) / (HIGH - LOW) * BINS)
    return min(max(at, 0), BINS - 1)


def lower_edge(bin_index: int) -> float:
    return LOW + (HIGH - LOW) * bin_index / BINS


@dataclass
class Histogram:
    counts: Counter = field(default_factory=Counter)  # bin -> records
    field_name: str = "filter.clip_score"
    model: str = ""  # which model scored: histograms of different models do not add up

    @property
    def n(self) -> int:
        return sum(self.counts.values())

    def add(self, other: Histogram) -> None:
        if other.model != self.model or other.field_name != self.field_name:
            raise VecapError(
                f"histograms of different scores do not add up: {self.field_name} of "
                f"'{self.model}' and {other.field_name} of '{other.model}'"
            )
        self.counts.update(other.counts)

    def threshold(self, fraction: float) -> tuple[int, int]:
        """(bin, k): keep the records in `bin` or above to keep the top `fraction`
        (k = ceil(fraction * n) records, more by the ties in `bin`); bin BINS: none."""
        k = math.ceil(round(fraction * self.n, 9))
        seen = 0
        for bin_index in sorted(self.counts, reverse=True):
            seen += self.counts[bin_index]
            if seen >= k:
                return bin_index, k
        return BINS, k  # an empty pool

    def to_json(self) -> bytes:
        body = {
            "kind": KIND,
            "field": self.field_name,
            "model": self.model,
            "bins": BINS,
            "range": [LOW, HIGH],
            "n": self.n,
            "counts": {str(b): n for b, n in sorted(self.counts.items())},
        }
        return orjson.dumps(body)

    @classmethod
    def from_counts(cls, counts: Mapping[str, int], **fields) -> Histogram:
        return cls(Counter({int(b): int(n) for b, n in counts.items() if n}), **fields)


def read(path: str) -> Histogram:
    try:
        with open(path, "rb") as f:
            body = orjson.loads(f.read())
    except OSError as err:
        raise VecapError(f"cannot read --histogram '{path}': {err.strerror}") from None
    except orjson.JSONDecodeError:
        raise VecapError(f"--histogram '{path}' is not JSON") from None
    if not isinstance(body, dict) or body.get("kind") != KIND:
        raise VecapError(f"--histogram '{path}' is not a histogram vecap filter score wrote")
    if body.get("bins") != BINS or body.get("range") != [LOW, HIGH]:
        raise VecapError(f"--histogram '{path}': {body.get('bins')} bins, expected {BINS}")
    counts = body.get("counts")
    try:
        hist = Histogram.from_counts(
            counts, field_name=str(body.get("field")), model=str(body.get("model"))
        )
    except (AttributeError, TypeError, ValueError):
        raise VecapError(f"--histogram '{path}': damaged counts") from None
    if hist.n != body.get("n") or any(not 0 <= b < BINS or n < 0 for b, n in hist.counts.items()):
        raise VecapError(f"--histogram '{path}': damaged counts")
    return hist


def merged(paths: Iterable[str]) -> tuple[Histogram, list[str]]:
    """The sum of the histograms at `paths` (each a file or a glob), and the files read."""
    files: list[str] = []
    for spec in paths:
        found = sorted(glob.glob(spec)) if glob.has_magic(spec) else [spec]
        if not found:
            raise VecapError(f"--histogram '{spec}': no such file")
        files.extend(found)
    total: Histogram | None = None
    for path in dict.fromkeys(os.path.normpath(p) for p in files):  # a file once
        hist = read(path)
        if total is None:
            total = hist
        else:
            total.add(hist)
    assert total is not None
    return total, files
