"""The stages on plain lists: filters, matching, balancing, and the one-pass cache."""

import io

import orjson
import pytest

from vecap_cli.errors import VecapError
from vecap_cli.steps.curate import stages
from vecap_cli.steps.curate.balancing import Balancer
from vecap_cli.steps.curate.matching import Matcher
from vecap_cli.steps.curate.stages import CurateConfig, MatchCache, balance, count, prepare
from vecap_cli.stream.sample import Sample
from vecap_cli.stream.tally import Tally

ENTRIES = ["dog", "cat", "red cube", "photo"]
RECORDS = [
    {"key": "a", "alt": "a dog and a cat", "url": "u1"},
    {"key": "b", "alt": "a red cube"},
    {"key": "c", "alt": "there is nothing here"},
    {"key": "d", "alt": None},
    {"key": "e", "alt": "A dog   AND a cat", "url": "u2"},
    {"key": "f", "alt": "<b>dog</b> in a park", "url": "u1"},
    {"key": "g", "alt": "cat"},
]


def samples(records=RECORDS):
    return [Sample(dict(r), idx=i) for i, r in enumerate(records)]


def run(config=CurateConfig(), probs=(1.0, 1.0, 1.0, 1.0), records=RECORDS):
    tally = Tally("curate")
    pairs = prepare(samples(records), tally, config, Matcher(ENTRIES).find_many)
    out = list(balance(pairs, tally, config, Balancer(list(probs), config.seed)))
    return {s.key: s.record["curate"] for s in out}, tally


def test_matches_are_written_and_everything_is_accounted_for():
    out, tally = run()
    assert out == {
        "a": {"entries": [0, 1], "p": 1.0, "keep": True},
        "b": {"entries": [2], "p": 1.0, "keep": True},
        "e": {"entries": [0, 1], "p": 1.0, "keep": True},
        "g": {"entries": [1], "p": 1.0, "keep": True},
    }
    assert dict(tally.dropped) == {"no-match": 2}  # c, and f ("<b>dog</b>" is no " dog ")
    assert dict(tally.rejected) == {"no-text": 1}


def test_prepare_pairs_each_record_with_its_ids_across_chunks_whatever_was_removed(monkeypatch):
    """Hot records, a rejected one, a list-valued field and no-matches in chunks of
    any size: the same pairs, and the same counts in the same order, whether the
    drops are sealed per record (tracking) or counted in bulk."""
    records = [
        *RECORDS,
        {"key": "h", "alt": ["nothing", "a dog"]},
        {"key": "i", "alt": "red cube photo"},
    ]

    def held(batch: int, tracking: bool):
        monkeypatch.setattr(stages, "BATCH", batch)
        tally = Tally("curate")
        if tracking:
            tally.track()
        pairs = prepare(samples(records), tally, CurateConfig(), Matcher(ENTRIES).find_many)
        kept, n, matched = stages.hold(pairs, tally)
        ids = [(s.key, i if type(i) is list else sorted(i.union())) for s, i in kept]
        return ids, (n, matched), list(tally.dropped.items()), dict(tally.rejected)

    expected = (
        [("a", [0, 1]), ("b", [2]), ("e", [0, 1]), ("g", [1]), ("h", [0]), ("i", [2, 3])],
        (8, 6),
        [("no-match", 2)],
        {"no-text": 1},
    )
    for batch in (1, 2, 3, 1024):
        for tracking in (False, True):
            assert held(batch, tracking) == expected


def test_filters_drop_under_their_own_rules():
    config = CurateConfig(html=True, text_filter=True, dedup=("url", "text"))
    out, tally = run(config)
    assert sorted(out) == ["a", "b"]
    assert dict(tally.dropped) == {
        "duplicate-text": 1,  # e: the same text as a, by case and spaces
        "duplicate-url": 1,  # f: a's url
        "text-filter": 1,  # g: one word
        "no-match": 1,  # c
    }
    assert tally.extra["html_cleaned"] == 1


def test_keep_all_marks_instead_of_dropping():
    out, tally = run(CurateConfig(keep_all=True), probs=(0.0, 0.0, 1.0, 1.0))
    assert out["c"] == {"entries": [], "p": 0.0, "keep": False}
    assert out["a"] == {"entries": [0, 1], "p": 0.0, "keep": False}
    assert out["b"]["keep"] is True
    assert not tally.dropped and tally.extra["kept"] == 1


def test_unknown_fields_travel_untouched_and_curate_is_replaced():
    record = {"key": "z", "alt": "a dog", "curate": {"old": 1}, "x": {"deep": [1, None]}}
    tally = Tally("curate")
    pairs = prepare(samples([record]), tally, CurateConfig(), Matcher(ENTRIES).find_many)
    (out,) = balance(pairs, tally, CurateConfig(), Balancer([1.0] * 4, 0))
    assert out.record == {**record, "curate": {"entries": [0], "p": 1.0, "keep": True}}


def test_count_tallies_matched_as_out_and_the_rest_as_no_match():
    tally = Tally("curate count")
    config = CurateConfig(dedup=("url",))
    records, matched = count(prepare(samples(), tally, config, Matcher(ENTRIES).find_many), tally)
    assert (records, matched) == (5, 4)  # d rejected, f a duplicate url
    assert tally.n_out == 4 and dict(tally.dropped) == {"no-match": 1, "duplicate-url": 1}


def test_the_cache_replays_what_prepare_decided():
    config = CurateConfig(html=True, text_filter=True, dedup=("url", "text"))
    cache = MatchCache()
    first = Tally("curate")
    direct = list(prepare(samples(), first, config, Matcher(ENTRIES).find_many, cache))
    # the reader rejected an input before these: ordinals jump by one
    shifted = [Sample(s.record, idx=s.idx + (s.idx >= 3)) for s in samples()]
    cache = MatchCache()
    list(prepare(shifted, Tally("curate"), config, Matcher(ENTRIES).find_many, cache))
    second = Tally("curate")
    replayed = list(cache.replaying(shifted, second, config))
    assert [(s.key, ids) for s, ids in replayed] == [(s.key, ids) for s, ids in direct]
    assert second.dropped == first.dropped and second.rejected == first.rejected


@pytest.mark.parametrize("batch", [1, 2, 3])
def test_matching_in_batches_changes_nothing_and_rejects_stay_in_input_order(batch, monkeypatch):
    config = CurateConfig(html=True, text_filter=True, dedup=("url", "text"))
    whole, whole_tally = run(config)
    records = [*RECORDS, {"key": "h", "alt": 3}, {"key": "i", "alt": "a small grey cat"}]
    monkeypatch.setattr(stages, "BATCH", batch)
    out, tally = run(config)
    assert out == whole and tally.dropped == whole_tally.dropped
    cache = MatchCache()
    rejects = Tally("curate", rejects=io.BytesIO())
    pairs = list(prepare(samples(records), rejects, config, Matcher(ENTRIES).find_many, cache))
    assert [s.key for s, _ in pairs] == ["a", "b", "c", "i"]
    assert [orjson.loads(line)["idx"] for line in rejects.rejects.getvalue().splitlines()] == [3, 7]
    assert list(cache.codes) == [0, 0, 0, 1, 4, 3, 2, 1, 0]  # by RULES


def test_the_cache_notices_an_input_that_grew():
    cache = MatchCache()
    list(prepare(samples(), Tally("curate"), CurateConfig(), Matcher(ENTRIES).find_many, cache))
    more = [*samples(), Sample({"key": "h", "alt": "dog"}, idx=len(RECORDS))]
    with pytest.raises(VecapError, match="the input changed between curate's two passes"):
        list(cache.replaying(more, Tally("curate"), CurateConfig()))


def test_t_must_be_positive():
    with pytest.raises(ValueError, match="--t must be positive"):
        CurateConfig(t=0)
