"""A step's own counters seal with the shard that holds their input, whatever the
order in which a stage counted them."""

import io

from vecap_cli.stream.sample import Sample
from vecap_cli.stream.tally import Tally


def _sample(idx: int) -> Sample:
    return Sample({"key": str(idx)}, idx=idx)


def test_counts_seal_by_input_ordinal_even_out_of_order():
    tally = Tally("t")
    tally.track()
    for idx in (0, 1, 4, 2, 3, 5):  # a stage that read ahead, then counted back
        tally.count("kept", _sample(idx), 1)
        tally.count("chosen", _sample(idx), 1, key="alt" if idx % 2 else "vecap")
    first = tally.seal(boundary=3, n_out=3)
    assert first["counts"] == {"kept": 3, "chosen": {"vecap": 2, "alt": 1}}
    assert tally.as_dict()["kept"] == 3  # --stats shows what is sealed
    last = tally.seal(boundary=6, n_out=6)
    assert last["counts"] == {"kept": 6, "chosen": {"vecap": 3, "alt": 3}}

    resumed = Tally("t")  # a resumed run restores the first seal, then counts the rest
    resumed.restore(first)
    resumed.track()
    for idx in (3, 4, 5):
        resumed.count("kept", _sample(idx), 1)
        resumed.count("chosen", _sample(idx), 1, key="alt" if idx % 2 else "vecap")
    assert resumed.seal(boundary=6, n_out=6)["counts"] == last["counts"]


def test_untracked_counts_are_live():
    tally = Tally("t")
    tally.count("kept", _sample(0), 2)
    tally.count("kept", None, 3)
    assert tally.as_dict()["kept"] == 5


def _count_into(tally: Tally, idxs) -> None:
    """What a stage counts: drops, rejections, additions and its own statistics."""
    tally.declare("chosen", keyed=True)
    for idx in idxs:
        tally.n_in += 1
        sample = _sample(idx)
        if idx % 4 == 1:
            tally.drop("odd", sample)
        elif idx % 4 == 3:
            tally.reject("bad", f"record {idx}", sample)
        else:
            tally.count("chosen", sample, 1, key="alt" if idx % 8 else "vecap")
            tally.count("kept", sample, 0.5)
            tally.n_out += 1


def _one_and_merged(tmp_path, tracking: bool) -> tuple[Tally, Tally]:
    """A tally that counted 0..39 itself, and one that merged four batches counted
    apart; their --rejects are files `one` and `merged` in tmp_path."""
    one = Tally("t", rejects=open(tmp_path / "one", "w+b"))
    whole = Tally("t", rejects=open(tmp_path / "merged", "w+b"))
    if tracking:
        one.track()
        whole.track()
    _count_into(one, range(40))
    for start in range(0, 40, 10):
        batch = whole.apart()
        _count_into(batch, range(start, start + 10))
        whole.merge(batch.detach())
    return one, whole


def _rejects(tally: Tally) -> bytes:
    tally.rejects.flush()
    return open(tally.rejects.name, "rb").read()


def test_batches_counted_apart_merge_into_the_counts_of_one_tally(tmp_path):
    one, whole = _one_and_merged(tmp_path, tracking=False)
    assert whole.as_dict() | {"seconds": 0} == one.as_dict() | {"seconds": 0}
    assert _rejects(whole) == _rejects(one) and _rejects(one).count(b"\n") == 10


def test_merged_batches_seal_as_one_tally_does(tmp_path):
    one, whole = _one_and_merged(tmp_path, tracking=True)
    for boundary, n_out in ((13, 7), (40, 20)):
        assert whole.seal(boundary, n_out) == one.seal(boundary, n_out)
        assert _rejects(whole) == _rejects(one)
    assert whole.as_dict() | {"seconds": 0} == one.as_dict() | {"seconds": 0}


def test_detach_leaves_a_tally_that_counts_from_zero():
    tally = Tally("t", rejects=io.BytesIO()).apart()
    _count_into(tally, range(5))
    first = tally.detach()
    _count_into(tally, range(5, 8))
    second = tally.detach()
    assert (first.n_in, second.n_in) == (5, 3)
    assert first.written.count(b"\n") == 1 and second.written.count(b"\n") == 1


def _reasons(data: bytes) -> list[tuple[int, str]]:
    import orjson

    return [(line["idx"], line["reason"]) for line in map(orjson.loads, data.splitlines())]


def test_held_rejections_are_written_in_input_order():
    """A stage that reads ahead: the reader rejects input 5 before the stage rejects
    2 and 4; held lines come out by input ordinal, whatever the order of the events."""
    rejects = io.BytesIO()
    tally = Tally("t", rejects=rejects)
    tally.hold()
    tally.reject("bad-json", idx=5, origin="in:6")
    tally.reject("bad-image", "", _sample(4))
    tally.reject("bad-image", "", _sample(2))
    assert rejects.getvalue() == b""
    tally.release(5)
    assert _reasons(rejects.getvalue()) == [(2, "bad-image"), (4, "bad-image")]
    tally.release()  # the rest, and no holding after it
    tally.reject("late", idx=3, origin="in:4")
    assert _reasons(rejects.getvalue())[2:] == [(5, "bad-json"), (3, "late")]
    assert list(tally.as_dict()["rejected"]) == ["bad-image", "bad-json", "late"]  # by name


def test_sealed_rejections_are_written_in_input_order(tmp_path):
    rejects = open(tmp_path / "rejects.jsonl", "w+b")
    tally = Tally("t", rejects=rejects)
    tally.track()
    tally.hold()  # a tracking tally holds its lines until the seal anyway
    for idx in (3, 0, 2, 1):
        tally.reject("r", idx=idx, origin="in")
    tally.release(10)
    assert rejects.tell() == 0
    tally.seal(boundary=3, n_out=0)
    data = (tmp_path / "rejects.jsonl").read_bytes()
    assert [idx for idx, _ in _reasons(data)] == [0, 1, 2]
    rejects.close()
