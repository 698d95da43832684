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
        (b"not json", "is not a counts file \\(not JSON, not .npy\\)"),
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


# -- MetaCLIP's count files ------------------------------------------------------------

ENTRIES = ["dog", "cat", "red cube", "sky"]


def metaclip_files(tmp_path, counts):
    """The same counts in each of MetaCLIP's layouts, as its scripts write them."""
    import numpy as np

    # substr_indexing / balancing: np.save of an array indexed by entry id
    np.save(tmp_path / "entry_count.npy", np.array(counts, dtype=np.uint64))
    (tmp_path / "counts_list.json").write_bytes(orjson.dumps(counts))
    # the released entry_counts_400m.json: entry -> count
    (tmp_path / "entry_counts.json").write_bytes(
        orjson.dumps(dict(zip(ENTRIES, counts, strict=True)))
    )
    return ["entry_count.npy", "counts_list.json", "entry_counts.json"]


@pytest.mark.parametrize("name", ["entry_count.npy", "counts_list.json", "entry_counts.json"])
def test_metaclip_count_files_read_against_their_metadata(tmp_path, name):
    from vecap_cli.steps.curate.metadata import Metadata, metadata_sha

    metaclip_files(tmp_path, [40_511, 0, 3, 2**40])
    meta = Metadata(ENTRIES, metadata_sha(ENTRIES), "m.json")
    counts = read_counts(str(tmp_path / name), meta)
    assert counts.counts == [40_511, 0, 3, 2**40]
    assert (counts.metadata_sha, counts.n_entries, counts.matching) == (meta.sha256, 4, {})


def test_an_entry_object_may_leave_out_entries_it_never_counted(tmp_path):
    from vecap_cli.steps.curate.metadata import Metadata

    (tmp_path / "c.json").write_bytes(orjson.dumps({"sky": 7}))
    assert read_counts(str(tmp_path / "c.json"), Metadata(ENTRIES, "s")).counts == [0, 0, 0, 7]


@pytest.mark.parametrize(
    ("write", "message"),
    [
        (lambda p, np: np.save(p, np.zeros((2, 2))), "of shape \\(2, 2\\): MetaCLIP's entry_count"),
        (lambda p, np: np.save(p, np.array(["a", "b"])), "holds a <U1 array"),
        (lambda p, np: np.save(p, np.ones(3)), "3 counts for the 4 entries"),
        (lambda p, np: np.save(p, np.array([1.0, 2.5, 0, 0])), "count 1 is 2.5"),
        (lambda p, np: p.write_bytes(b"\x93NUMPY garbage"), "is a damaged .npy file"),
        (lambda p, np: p.write_bytes(b"[1, 2, -3, 4]"), "count 2 is -3"),
        (lambda p, np: p.write_bytes(b'[1, "2", 3, 4]'), "count 1 is '2'"),
        (lambda p, np: p.write_bytes(b'{"dog": 1, "wolf": 2}'), "1 entries that 'm.json' lacks"),
        (lambda p, np: p.write_bytes(b"\x00\x01binary"), "not JSON, not .npy"),
    ],
)
def test_a_count_file_of_no_known_layout_is_one_line_naming_it(tmp_path, write, message):
    import numpy as np

    from vecap_cli.steps.curate.metadata import Metadata

    path = tmp_path / "counts.npy"  # np.save adds .npy to a name without it
    write(path, np)
    with pytest.raises(VecapError, match=message) as err:
        read_counts(str(path), Metadata(ENTRIES, "s", "m.json"))
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_metaclip_counts_are_not_merged(tmp_path):
    metaclip_files(tmp_path, [1, 2, 3, 4])
    with pytest.raises(VecapError, match="MetaCLIP's count file: --merge adds vecap"):
        merge([str(tmp_path / "counts_list.json")])


# -- MetaCLIP 2's counts per language ----------------------------------------------------


def languages(tmp_path):
    from vecap_cli.steps.curate.worldwide import read_languages

    (tmp_path / "meta").mkdir()
    (tmp_path / "meta" / "en.json").write_bytes(orjson.dumps(["dog", "photo", "sky"]))
    (tmp_path / "meta" / "fr.json").write_bytes(orjson.dumps(["chien", "photo"]))
    (tmp_path / "meta" / "ja.json").write_bytes(orjson.dumps(["写真"]))
    return read_languages(str(tmp_path / "meta"))


def test_metaclip2_npz_counts_land_on_each_languages_ids(tmp_path):
    import numpy as np

    meta = languages(tmp_path)  # en 0-2, fr 3-4, ja 5
    # as count_per_shard writes it: uint64 per language; ja never matched, so absent
    np.savez(
        tmp_path / "0.npz",
        en=np.array([7, 0, 2**40], dtype=np.uint64),
        fr=np.array([1, 3], dtype=np.uint64),
    )
    counts = read_counts(str(tmp_path / "0.npz"), meta)
    assert counts.counts == [7, 0, 2**40, 1, 3, 0]
    assert (counts.metadata_sha, counts.n_entries) == (meta.sha256, 6)


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"de": [1]}, "counts language 'de', for which '.*meta' has no list"),
        ({"en": [1, 2]}, "2 counts for the 3 entries of 'en'"),
        ({"fr": [[1, 2]]}, "language 'fr' must be one number per entry"),
        ({"fr": [1, -2]}, "count 4 is -2"),
    ],
)
def test_a_wrong_npz_is_one_line_naming_it(tmp_path, arrays, message):
    import numpy as np

    meta = languages(tmp_path)
    np.savez(tmp_path / "c.npz", **{k: np.array(v) for k, v in arrays.items()})
    with pytest.raises(VecapError, match=message) as err:
        read_counts(str(tmp_path / "c.npz"), meta)
    assert "c.npz" in str(err.value) and "\n" not in str(err.value)


def test_an_npz_needs_the_language_folder_and_names_need_one_language(tmp_path):
    import numpy as np

    from vecap_cli.steps.curate.metadata import Metadata

    meta = languages(tmp_path)
    np.savez(tmp_path / "c.npz", en=np.array([1, 2, 3]))
    with pytest.raises(VecapError, match=r"needs the --metadata folder .* \(--rule metaclip2\)"):
        read_counts(str(tmp_path / "c.npz"), Metadata(ENTRIES, "s", "m.json"))
    (tmp_path / "c.json").write_bytes(b"PK\x03\x04 torn")
    with pytest.raises(VecapError, match=r"damaged \.npz"):
        read_counts(str(tmp_path / "c.json"), meta)
    (tmp_path / "named.json").write_bytes(orjson.dumps({"photo": 3}))  # en's or fr's?
    with pytest.raises(VecapError, match="several languages"):
        read_counts(str(tmp_path / "named.json"), meta)
