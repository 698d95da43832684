"""Counts files: round trip, merge by addition, refusal of what does not add up."""

from array import array
from itertools import chain

import orjson
import pytest

from vecap_cli.errors import VecapError
from vecap_cli.steps.curate.counts import (
    Accumulator,
    EntryCounts,
    merge,
    read_counts,
    write_counts,
)

MATCHING = {"field": "alt", "html": False, "text_filter": False, "dedup": []}


def counted(batches: list[list[int]], n: int = 6, sha: str = "s1") -> EntryCounts:
    accumulator = Accumulator(n)
    match = accumulator.recording(lambda texts: [batches[int(text)] for text in texts])
    match([str(i) for i in range(len(batches) // 2)])  # in two calls, as records stream by
    match([str(i) for i in range(len(batches) // 2, len(batches))])
    return accumulator.result(sha, MATCHING, len(batches), sum(map(bool, batches)))


def test_a_record_counts_once_per_entry_it_matches():
    counts = counted([[0, 2], [2], [], [2, 5]])
    assert counts.counts == [1, 0, 3, 0, 0, 1]
    assert (counts.records, counts.matched) == (4, 3)


def test_round_trip_is_sparse_and_exact(tmp_path):
    counts = counted([[0, 2], [2], [5]])
    write_counts(str(tmp_path / "c.json"), counts)
    doc = orjson.loads((tmp_path / "c.json").read_bytes())
    assert (doc["ids"], doc["counts"]) == ([0, 2, 5], [1, 2, 1])
    assert read_counts(str(tmp_path / "c.json")) == counts


def test_merge_adds_up(tmp_path):
    a, b = counted([[0, 2], [2]]), counted([[2], [1]])
    write_counts(str(tmp_path / "a.json"), a)
    write_counts(str(tmp_path / "b.json"), b)
    total = merge([str(tmp_path / "a.json"), str(tmp_path / "b.json")])
    assert total.counts == counted([[0, 2], [2], [2], [1]]).counts
    assert (total.records, total.matched) == (4, 4)


def test_merge_refuses_another_metadata_or_other_settings(tmp_path):
    write_counts(str(tmp_path / "a.json"), counted([[0]]))
    write_counts(str(tmp_path / "b.json"), counted([[0]], sha="s2"))
    other = counted([[0]])
    other.matching = {**MATCHING, "html": True}
    write_counts(str(tmp_path / "c.json"), other)
    with pytest.raises(VecapError, match=r"'.*b.json' counts a different metadata list"):
        merge([str(tmp_path / "a.json"), str(tmp_path / "b.json")])
    with pytest.raises(VecapError, match="other matching settings"):
        merge([str(tmp_path / "a.json"), str(tmp_path / "c.json")])


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"not json", "is not a counts file \\(not JSON\\)"),
        (b'{"format": "other"}', "is not a counts file written by"),
        (b'{"format": "vecap-curate-counts", "version": 9}', "version 9, not 1"),
        (
            b'{"format": "vecap-curate-counts", "version": 1, "metadata": {"sha256": "s", '
            b'"entries": 2}, "records": 1, "matched": 1, "ids": [5], "counts": [1]}',
            "damaged counts file",
        ),
    ],
)
def test_bad_counts_files_are_one_clear_error(tmp_path, data, message):
    (tmp_path / "c.json").write_bytes(data)
    with pytest.raises(VecapError, match=message):
        read_counts(str(tmp_path / "c.json"))


def test_ids_added_at_once_count_as_recorded_ones():
    batches = [[0, 2], [2], [], [2, 5]]
    accumulator = Accumulator(6)
    accumulator.add_all(array("i", chain.from_iterable(batches)))
    assert accumulator.result("s1", MATCHING, 4, 3) == counted(batches)
