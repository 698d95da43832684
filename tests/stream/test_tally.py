"""A step's own counters seal with the shard that holds their input, whatever the
order in which a stage counted them."""

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
