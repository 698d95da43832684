"""Several texts per record: every text matched and counted, kept through any,
one that matched drawn from (seed, key) to train on."""

from collections import Counter

import pytest

from vecap_cli.rand import uniform
from vecap_cli.steps.curate import stages
from vecap_cli.steps.curate.balancing import Balancer
from vecap_cli.steps.curate.matching import Matcher
from vecap_cli.steps.curate.stages import CurateConfig
from vecap_cli.steps.curate.texts import TextMatcher, texts_of
from vecap_cli.stream.sample import Sample
from vecap_cli.stream.tally import Tally

ENTRIES = ["dog", "cat", "red cube", "photo", "sky", "hot dog"]


def samples(records):
    return [Sample(record=r, idx=i) for i, r in enumerate(records)]


def prepared(records, config, entries=ENTRIES):
    tally = Tally("t")
    matcher = Matcher(entries)
    find = TextMatcher(matcher).find_many if config.per_text else matcher.find_many
    return list(stages.prepare(samples(records), tally, config, find)), tally


def test_texts_of_reads_fields_in_order_and_lists_item_by_item():
    record = {"alt": ["a", 3, "b"], "title": "t", "other": "x", "empty": []}
    assert texts_of(record, ("title", "alt", "empty", "missing")) == [
        ("title", "t"),
        ("alt[0]", "a"),
        ("alt[2]", "b"),
    ]


def test_a_list_field_is_matched_text_by_text_not_rejected():
    records = [
        {"key": "a", "alt": ["a dog", "a red cube in the sky", "nothing"]},
        {"key": "b", "alt": []},  # no string at all: no-text, as before
        {"key": "c", "alt": "a cat"},
        {"key": "d", "alt": [None, 5]},
    ]
    pairs, tally = prepared(records, CurateConfig())
    assert [s.record["key"] for s, _ in pairs] == ["a", "c"]
    (_, several), (_, one) = pairs
    assert [found.ids for _, _, found in several.texts] == [[0], [2, 4], []]
    assert list(several) == [0, 2, 4] and several.union() == [0, 2, 4]
    assert one == [1]
    assert tally.rejected == Counter({"no-text": 2})


def test_every_text_counts_each_entry_it_matches():
    """MetaCLIP 2 counts per text: an entry two texts of a record match counts twice."""
    records = [{"key": "a", "alt": "a dog photo", "title": "dog in the sky"}]
    pairs, _ = prepared(records, CurateConfig(field="alt,title"))
    (_, matches) = pairs[0]
    assert sorted(matches) == [0, 0, 3, 4]
    assert matches.union() == [0, 3, 4]


def test_keep_probability_is_one_minus_the_product_over_all_matched_entries():
    rng_counts = [50, 9, 400, 120, 7_000, 33]  # per entry
    t = 40
    probs = [t / c if c > t else 1.0 for c in rng_counts]
    balancer = Balancer(probs, seed=5)
    config = CurateConfig(field="alt,title", t=t, seed=5, keep_all=True)
    records = [
        {"key": f"k{i}", "alt": alt, "title": title}
        for i, (alt, title) in enumerate(
            [
                ("a dog photo", "red cube in the sky"),
                ("hot dog", "a dog"),
                ("photo", "sky"),
                ("nothing here", "sky photo"),
                ("a dog", "hot dog photo"),
            ]
            * 40
        )
    ]
    pairs, _ = prepared(records, config)
    out = list(stages.balance(pairs, Tally("t"), config, balancer))
    assert len(out) == len(records)
    kept = 0
    for sample in out:
        curate = sample.record["curate"]
        union = sorted({e for text in curate["texts"] for e in text["entries"]})
        miss = 1.0
        for e in union:
            miss *= 1 - probs[e]
        assert curate["p"] == pytest.approx(1 - miss, abs=1e-15)
        draws = [uniform(5, sample.record["key"], e) < probs[e] for e in union]
        assert curate["keep"] == any(draws)
        kept += curate["keep"]
    assert 0 < kept < len(records)  # some kept, some not: the draws decide


def test_the_training_text_is_drawn_among_the_texts_that_matched():
    config = CurateConfig(field="alt,title,desc", t=10**6, seed=9)
    records = [
        {"key": f"k{i}", "alt": "a dog", "title": "nothing", "desc": "the sky"} for i in range(400)
    ]
    pairs, _ = prepared(records, config)
    out = list(stages.balance(pairs, Tally("t"), config, Balancer([1.0] * len(ENTRIES), 9)))
    chosen = Counter(s.record["curate"]["chosen"] for s in out)
    assert set(chosen) == {0, 2}  # never "nothing", which matched nothing
    assert 150 < chosen[0] < 250  # about half each
    for sample in out:
        curate = sample.record["curate"]
        assert (
            curate["text"] == [sample.record[f] for f in ("alt", "title", "desc")][curate["chosen"]]
        )
        assert [t["field"] for t in curate["texts"]] == ["alt", "title", "desc"]
    again = list(
        stages.balance(prepared(records, config)[0], Tally("t"), config, Balancer([1.0] * 6, 9))
    )
    assert [s.record["curate"] for s in again] == [s.record["curate"] for s in out]


def test_filters_screen_each_text():
    config = CurateConfig(field="alt,title", html=True, text_filter=True, dedup=("text",))
    records = [
        {"key": "a", "alt": "<b>dog</b>", "title": "a red cube in the sky"},  # alt too short
        {"key": "b", "alt": "dog", "title": "cat"},  # both too short: text-filter
        {"key": "c", "alt": "x", "title": "A red  cube in the SKY"},  # same texts as a: dup
    ]
    pairs, tally = prepared(records, config)
    assert [s.record["key"] for s, _ in pairs] == ["a"]
    assert [label for label, _, _ in pairs[0][1].texts] == ["title"]
    assert tally.dropped == Counter({"text-filter": 1, "duplicate-text": 1})


def metaclip2_curate(records, probs, seed, choice):
    """MetaCLIP 2's released `curate` (metaclip/curation/curate.py), one record at a
    time: of the texts that matched, `choice` picks one; the record is kept with
    P = 1 - prod(1 - p_e) over that text's entries alone, and trains on it."""
    out = {}
    for record in records:
        matched = [(field, ids) for field, ids in record["matched"] if ids]
        if not matched:
            continue
        pick = choice(record["key"], len(matched))
        field, ids = matched[pick]
        miss = 1.0
        for e in ids:
            miss *= 1 - probs[e]
        keep = any(uniform(seed, record["key"], e) < probs[e] for e in ids)
        out[record["key"]] = (record[field], 1 - miss, keep)
    return out


def test_texts_one_keeps_by_the_chosen_text_alone_as_metaclip2s_curate():
    counts = [5_000, 9, 400, 120, 7_000, 33]  # dog and sky: head; cat: tail
    t = 40
    probs = [t / c if c > t else 1.0 for c in counts]
    config = CurateConfig(field="alt,title", t=t, seed=3, keep_all=True, texts="one")
    pairs = ("a dog", "a cat"), ("sky", "nothing"), ("hot dog", "sky photo"), ("x", "y")
    records = [
        {"key": f"k{i}", "alt": alt, "title": title} for i, (alt, title) in enumerate(pairs * 60)
    ]
    prepared_pairs, _ = prepared(records, config)
    out = list(stages.balance(prepared_pairs, Tally("t"), config, Balancer(probs, 3)))
    ours = {s.record["key"]: s.record["curate"] for s in out}

    matcher = Matcher(ENTRIES)
    for record in records:
        record["matched"] = [(f, matcher(record[f])) for f in ("alt", "title")]
    # our draw of the text, as MetaCLIP 2's random.choice
    choice = lambda key, n: int(uniform(3, key, "text") * n)  # noqa: E731
    reference = metaclip2_curate(records, probs, 3, choice)
    for key, (text, p, keep) in reference.items():
        assert (ours[key]["text"], ours[key]["keep"]) == (text, keep)
        assert ours[key]["p"] == pytest.approx(p, abs=1e-15)
    assert {k for k, c in ours.items() if c["p"] > 0} == set(reference)
    # a record of "a dog" / "a cat" is kept whenever "cat" (p = 1) is chosen, and with
    # "dog" chosen only by dog's own draw: not always, as under --texts any
    dog_cat = [ours[f"k{i}"] for i in range(0, len(records), len(pairs))]
    assert {c["text"] for c in dog_cat} == {"a dog", "a cat"}
    assert not all(c["keep"] for c in dog_cat)
    assert all(c["keep"] for c in dog_cat if c["text"] == "a cat")
    anyway = CurateConfig(field="alt,title", t=t, seed=3, keep_all=True)
    again = stages.balance(prepared(records, anyway)[0], Tally("t"), anyway, Balancer(probs, 3))
    assert all(s.record["curate"]["keep"] for s in again if s.record["alt"] == "a dog")


def test_texts_takes_any_or_one():
    with pytest.raises(ValueError, match="--texts"):
        CurateConfig(texts="all")
