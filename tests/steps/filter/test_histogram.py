"""The two-pass top fraction: histograms that add up, a threshold that equals a sort."""

import math
import random

import pytest

from vecap_cli.errors import VecapError
from vecap_cli.steps.filter import histogram as h
from vecap_cli.steps.filter.select import select
from vecap_cli.stream.sample import Sample
from vecap_cli.stream.tally import Tally


def scored(values):
    return [
        Sample({"key": f"k{i}", "filter": {"clip_score": v}}, idx=i) for i, v in enumerate(values)
    ]


def hist_of(values, model="m") -> h.Histogram:
    hist = h.Histogram(model=model)
    hist.counts.update(h.bin_of(v) for v in values)
    return hist


def kept(values, fraction):
    hist = hist_of(values)
    threshold, _ = hist.threshold(fraction)
    tally = Tally("t")
    out = list(select(scored(values), tally, threshold))
    assert len(out) + sum(tally.dropped.values()) == len(values)
    return sorted(s.record["filter"]["clip_score"] for s in out)


@pytest.mark.parametrize("fraction", [0.3, 0.01, 0.5, 0.999, 1.0])
def test_the_top_fraction_equals_a_sort_when_scores_are_distinct(fraction):
    rng = random.Random(1)
    # distinct at the bin resolution: 997 scores on a grid of 4 bins' spacing, shuffled
    values = [round(-0.9 + 4 * i * 2 / h.BINS + 1e-6, 6) for i in range(997)]
    rng.shuffle(values)
    k = math.ceil(fraction * len(values))
    assert kept(values, fraction) == sorted(values)[len(values) - k :]


def test_ties_at_the_threshold_are_all_kept_never_fewer():
    values = [0.1] * 5 + [0.5] * 3 + [-0.2] * 4  # top 4 of 12: 3 at 0.5, then 5 tied at 0.1
    out = kept(values, 4 / 12)
    assert out == [0.1] * 5 + [0.5] * 3  # 8, not 4: the tied 0.1 go together


def test_histograms_of_shards_add_up_to_the_pool_s():
    rng = random.Random(2)
    values = [rng.uniform(-1, 1) for _ in range(500)]
    whole = hist_of(values)
    parts = [hist_of(values[i::3]) for i in range(3)]
    total = h.Histogram(model="m")
    for part in parts:
        total.add(part)
    assert total.counts == whole.counts and total.threshold(0.3) == whole.threshold(0.3)


def test_histogram_files_round_trip_and_merge(tmp_path):
    a, b = hist_of([0.1, 0.2]), hist_of([0.2, -1.0, 1.0])
    (tmp_path / "h.rank0.json").write_bytes(a.to_json())
    (tmp_path / "h.rank1.json").write_bytes(b.to_json())
    merged, files = h.merged([str(tmp_path / "h.rank*.json")])
    assert len(files) == 2 and merged.n == 5
    assert merged.counts[h.bin_of(0.2)] == 2 and merged.counts[h.BINS - 1] == 1


def test_scores_of_different_models_do_not_add_up(tmp_path):
    (tmp_path / "a.json").write_bytes(hist_of([0.1], "a").to_json())
    (tmp_path / "b.json").write_bytes(hist_of([0.1], "b").to_json())
    with pytest.raises(VecapError, match="different scores"):
        h.merged([str(tmp_path / "a.json"), str(tmp_path / "b.json")])


@pytest.mark.parametrize(
    "body, message",
    [
        (b"{", "not JSON"),
        (b"[]", "not a histogram"),
        (b'{"kind": "vecap-filter-histogram"}', "bins"),
    ],
)
def test_a_damaged_histogram_is_one_line(tmp_path, body, message):
    (tmp_path / "h.json").write_bytes(body)
    with pytest.raises(VecapError, match=message):
        h.read(str(tmp_path / "h.json"))


def test_the_end_bins_hold_the_ends_and_beyond():
    assert h.bin_of(-1.0) == 0 and h.bin_of(-3.0) == 0
    assert h.bin_of(1.0) == h.BINS - 1 and h.bin_of(1.00001) == h.BINS - 1
    assert h.lower_edge(h.bin_of(0.25)) <= 0.25 < h.lower_edge(h.bin_of(0.25) + 1)


def test_records_without_a_score_are_rejected_not_kept():
    samples = [
        Sample({"key": "a"}, idx=0),
        Sample({"key": "b", "filter": "x"}, idx=1),
        Sample({"key": "c", "filter": {"clip_score": "0.9"}}, idx=2),
        Sample({"key": "d", "filter": {"clip_score": float("nan")}}, idx=3),
        Sample({"key": "e", "filter": {"clip_score": 0.9}}, idx=4),
    ]
    tally = Tally("t")
    out = list(select(samples, tally, h.bin_of(0.5)))
    assert [s.key for s in out] == ["e"] and tally.rejected == {"no-score": 4}
