"""`vecap filter select`: the second pass of a top fraction, against a global threshold.

The threshold comes from the histograms `vecap filter score` wrote (one per
rank, added up: histogram.py), so every rank keeps the same scores whatever its
share. A record is kept when the bin of its `filter.clip_score` is at or above
the threshold's bin, else dropped under `below-keep-fraction`; a record without
a score (not scored, or the field damaged) is rejected, `no-score`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator

from vecap_cli.steps.filter.histogram import bin_of
from vecap_cli.steps.filter.score import FIELD, SCORE
from vecap_cli.stream.sample import Sample
from vecap_cli.stream.tally import Tally

BELOW = "below-keep-fraction"
NO_SCORE = "no-score"


def select(samples: Iterable[Sample], tally: Tally, threshold_bin: int) -> Iterator[Sample]:
    for sample in samples:
        found = sample.record.get(FIELD)
        value = found.get(SCORE) if isinstance(found, dict) else None
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            tally.reject(NO_SCORE, f"no number in {FIELD}.{SCORE}", sample)
        elif bin_of(value) >= threshold_bin:
            yield sample
        else:
            tally.drop(BELOW, sample)
