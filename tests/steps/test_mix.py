from collections import Counter

import orjson
import pytest

from vecap_cli.cli.app import main
from vecap_cli.steps.mix import (
    POLICIES,
    PRESETS,
    CaptionDraw,
    MixConfig,
    OnlineDraw,
    available,
    choose_each,
    curate_p,
    mix,
    policy,
    preset_mix,
)
from vecap_cli.stream.sample import Sample
from vecap_cli.stream.tally import Tally


def run(records, **config):
    tally = Tally("mix")
    samples = [Sample(dict(r), idx=i) for i, r in enumerate(records)]
    out = [s.record for s in mix(samples, tally, MixConfig(**config))]
    return out, tally


RECORDS = [
    {"key": "a", "alt": "web a", "vecap": "fused a"},
    {"key": "b", "alt": "web b"},
    {"key": "c", "vecap": "fused c", "alt": "   "},
    {"key": "d", "alt": 5, "vecap": ""},
]


def test_first_takes_the_first_usable_key_in_order():
    out, tally = run(RECORDS, policy="first", keys=("vecap", "alt"))
    assert [r["text"] for r in out] == ["fused a", "web b", "fused c"]
    assert dict(tally.dropped) == {"no-caption": 1}
    assert tally.extra["chosen"] == {"vecap": 2, "alt": 1}


def test_concat_joins_what_is_there():
    out, _ = run(RECORDS, policy="concat", sep=" | ")
    assert [r["text"] for r in out] == ["web a | fused a", "web b", "fused c"]


def test_all_emits_one_suffixed_sample_per_caption_and_counts_the_extra():
    out, tally = run(RECORDS, policy="all")
    assert [(r["key"], r["text"]) for r in out] == [
        ("a_alt", "web a"),
        ("a_vecap", "fused a"),
        ("b_alt", "web b"),
        ("c_vecap", "fused c"),
    ]
    assert dict(tally.added) == {"all": 1}
    assert out[0]["vecap"] == "fused a"  # everything else carried through


def test_unknown_fields_travel_untouched():
    record = {"key": "z", "alt": "x", "meta": {"deep": [1, {"a": None}]}, "curate": {"keep": True}}
    out, _ = run([record], policy="first")
    assert out[0] == {**record, "text": "x"}


def test_random_draws_match_probabilities_over_100k_records():
    records = [{"key": f"k{i}", "alt": "a", "vecap": "v", "x": "x"} for i in range(100_000)]
    out, tally = run(records, keys=("alt", "vecap", "x"), probs=(0.2, 0.5, 0.3), seed=3)
    share = Counter(r["text"] for r in out)
    for text, p in (("a", 0.2), ("v", 0.5), ("x", 0.3)):
        assert abs(share[text] / 100_000 - p) < 0.01
    assert dict(tally.extra["chosen"]) == {"alt": share["a"], "vecap": share["v"], "x": share["x"]}


def test_random_falls_back_to_the_keys_a_record_has():
    out, _ = run([{"key": "b", "alt": "only alt"}], probs=(0.01, 0.99))
    assert out[0]["text"] == "only alt"


def test_a_draw_depends_on_seed_key_and_epoch_only():
    draw = CaptionDraw(("alt", "vecap"), None, seed=7)
    record = {"alt": "a", "vecap": "v"}
    picks = [draw(record, f"k{i}", 0) for i in range(200)]
    assert picks == [draw(dict(record, noise=i), f"k{i}", 0) for i in range(200)]
    assert picks != [draw(record, f"k{i}", 1) for i in range(200)]
    assert picks != [
        CaptionDraw(("alt", "vecap"), None, seed=8)(record, f"k{i}", 0) for i in range(200)
    ]


def test_draws_do_not_depend_on_how_the_pool_is_split():
    records = [{"key": f"k{i}", "alt": "a", "vecap": "v"} for i in range(1000)]
    whole, _ = run(records, seed=5)
    parts = run(records[:333], seed=5)[0] + run(records[333:], seed=5)[0]
    assert whole == parts


LISTS = [
    {"key": "a", "alt": "web a", "vecap": ["one", " ", "two", 3, "three"]},
    {"key": "b", "alt": ["", "web b"], "vecap": []},
    {"key": "c", "alt": [None, "  "]},
]


def test_list_valued_fields_hold_one_caption_per_non_blank_string():
    assert available(LISTS[0], ("alt", "vecap")) == [
        ("alt", "web a"),
        ("vecap", "one"),
        ("vecap", "two"),
        ("vecap", "three"),
    ]
    assert available(LISTS[1], ("vecap", "alt"), first=True) == [("alt", "web b")]
    assert available(LISTS[2], ("alt",)) == []


def test_first_concat_and_all_read_lists():
    out, tally = run(LISTS, policy="first", keys=("vecap", "alt"))
    assert [r["text"] for r in out] == ["one", "web b"]
    assert dict(tally.dropped) == {"no-caption": 1}
    out, _ = run(LISTS, policy="concat", sep="|")
    assert [r["text"] for r in out] == ["web a|one|two|three", "web b"]
    out, tally = run(LISTS, policy="all")
    assert [(r["key"], r["text"]) for r in out] == [
        ("a_alt", "web a"),
        ("a_vecap_0", "one"),
        ("a_vecap_1", "two"),
        ("a_vecap_2", "three"),
        ("b_alt", "web b"),
    ]
    assert dict(tally.added) == {"all": 3} and dict(tally.dropped) == {"no-caption": 1}


def test_a_list_field_is_drawn_by_its_weight_then_one_caption_uniformly():
    records = [
        {"key": f"k{i}", "alt": "a", "vecap": ["v0", "v1", "v2", "v3"]} for i in range(40_000)
    ]
    out, tally = run(records, keys=("alt", "vecap"), probs=(0.2, 0.8), seed=1)
    share = Counter(r["text"] for r in out)
    assert abs(share["a"] / 40_000 - 0.2) < 0.01
    for i in range(4):  # 0.8 / 4 each
        assert abs(share[f"v{i}"] / 40_000 - 0.2) < 0.01
    assert dict(tally.extra["chosen"]) == {"alt": share["a"], "vecap": 40_000 - share["a"]}
    # each epoch draws again, from (seed, key, epoch)
    again, _ = run(records[:500], keys=("alt", "vecap"), probs=(0.2, 0.8), seed=1, epoch=1)
    assert [r["text"] for r in again] != [r["text"] for r in out[:500]]


def test_one_caption_per_field_draws_as_before_lists():
    # the field draw is unchanged: a one-element list draws like its string
    draw = CaptionDraw(("alt", "vecap"), (0.3, 0.7), seed=4)
    for i in range(300):
        assert draw({"alt": "a", "vecap": ["v"]}, f"k{i}", 2) == draw(
            {"alt": "a", "vecap": "v"}, f"k{i}", 2
        )


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"policy": "nope"}, "unknown policy"),
        ({"keys": ("alt", "vecap"), "probs": (1.0,)}, "1 values for 2 keys"),
        ({"probs": (0.7, 0.7)}, "sum to 1"),
        ({"probs": (-0.5, 1.5)}, "non-negative"),
        ({"keys": ()}, "at least one"),
    ],
)
def test_bad_configs_say_what_is_wrong(config, message):
    with pytest.raises(ValueError, match=message):
        MixConfig(**config)


def test_a_policy_is_one_function_and_its_registration(tmp_path):
    """`longest`, registered here, runs through `vecap mix --policy longest` as a
    built-in one does: choices, accounting and output."""
    # The mix command is loaded when first named: load it before registering, or its
    # help (and man page, for every later test) would list "longest".
    import vecap_cli.cli.mix  # noqa: F401

    @policy("longest", "the longest caption")
    def longest(samples, tally, config):
        def pick(sample):
            return max(available(sample.record, config.keys), key=lambda f: len(f[1]), default=None)

        return choose_each(samples, tally, pick)

    pool, out, stats = tmp_path / "pool.jsonl", tmp_path / "out.jsonl", tmp_path / "stats.json"
    pool.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in RECORDS))
    try:
        with pytest.raises(SystemExit) as done:
            main(["mix", str(pool), "--policy", "longest", "-o", str(out), "--stats", str(stats)])
    finally:
        del POLICIES["longest"]
    assert done.value.code == 0
    assert [orjson.loads(line)["text"] for line in out.read_bytes().splitlines()] == [
        "fused a", "web b", "fused c",
    ]  # fmt: skip
    counts = orjson.loads(stats.read_bytes())
    assert counts["dropped"] == {"no-caption": 1} and counts["chosen"] == {"vecap": 2, "alt": 1}


# -- online curation -----------------------------------------------------------------


def curated_pool(n: int) -> list[dict]:
    """A matched pool as `vecap curate --keep-matched` writes it: p spread over (0, 1]."""
    return [
        {"key": f"r{i}", "alt": f"text {i}", "curate": {"entries": [i % 7], "p": (i % 20 + 1) / 20}}
        for i in range(n)
    ]


def drawn_keys(records, epoch, seed=0, **config):
    out, tally = run(records, keys=("alt",), online_curation=True, epoch=epoch, seed=seed, **config)
    return {r["key"] for r in out}, tally


@pytest.mark.parametrize("seed", [0, 7])
def test_each_epoch_keeps_the_expected_balanced_size(seed):
    records = curated_pool(4000)
    probs = [r["curate"]["p"] for r in records]
    mean = sum(probs)  # the balanced pool's expected size
    sd = sum(p * (1 - p) for p in probs) ** 0.5
    sizes = []
    for epoch in range(4):
        kept, tally = drawn_keys(records, epoch, seed)
        sizes.append(len(kept))
        assert abs(len(kept) - mean) < 4 * sd, (epoch, len(kept), mean, sd)
        assert tally.dropped["online-curation"] == 4000 - len(kept)
        assert tally.extra["expected_kept"] == pytest.approx(mean)
    assert len(set(sizes)) > 1  # each epoch a draw of its own


def test_epochs_are_drawn_independently():
    records = curated_pool(4000)
    probs = [r["curate"]["p"] for r in records]
    first, _ = drawn_keys(records, 0)
    second, _ = drawn_keys(records, 1)
    # independent draws: a record is in both with p^2
    both = sum(p * p for p in probs)
    sd = sum(p * p * (1 - p * p) for p in probs) ** 0.5
    assert abs(len(first & second) - both) < 4 * sd
    always = {r["key"] for r in records if r["curate"]["p"] == 1.0}
    assert always <= first & second  # p = 1: in every epoch


def test_the_draw_is_a_function_of_seed_key_and_epoch():
    records = curated_pool(1000)
    kept, _ = drawn_keys(records, 3, seed=5)
    assert kept == drawn_keys(records[::-1], 3, seed=5)[0]  # order does not matter
    parts = drawn_keys(records[:400], 3, seed=5)[0] | drawn_keys(records[400:], 3, seed=5)[0]
    assert kept == parts  # nor how the pool is split
    assert kept != drawn_keys(records, 3, seed=6)[0]
    assert kept != drawn_keys(records, 4, seed=5)[0]
    assert OnlineDraw(5)("r1", 3, 0.5) == OnlineDraw(5)("r1", 3, 0.5)


def test_the_inclusion_draw_does_not_bias_the_caption_draw():
    """Both draws per (seed, key, epoch): were they the same number, the records kept
    with a small p would all train on the first key."""
    records = [
        {"key": f"r{i}", "alt": "a", "vecap": "v", "curate": {"p": 0.2}} for i in range(4000)
    ]
    out, _ = run(records, keys=("alt", "vecap"), online_curation=True, seed=1)
    chosen = Counter(r["text"] for r in out)
    assert abs(chosen["a"] - chosen["v"]) < 4 * (len(out) ** 0.5)


@pytest.mark.parametrize(
    ("curate", "detail"),
    [
        (None, "no numeric curate.p"),
        ({"entries": [1]}, "no numeric curate.p"),
        ({"p": "0.5"}, "no numeric curate.p"),
        ({"p": True}, "no numeric curate.p"),
        ({"p": 1.5}, "not a probability"),
        ({"p": float("nan")}, "not a probability"),
    ],
)
def test_a_record_without_a_usable_p_is_a_counted_rejection(curate, detail):
    assert isinstance(curate_p({"curate": curate} if curate else {}), str)
    records = [*curated_pool(50), {"key": "bad", "alt": "x", "curate": curate}]
    out, tally = run(records, keys=("alt",), online_curation=True)
    assert tally.rejected == {"no-curate-p": 1}
    assert detail in curate_p(records[-1])
    assert len(out) + sum(tally.dropped.values()) + 1 == len(records)


def test_mix_epoch_online_curation_accounts_for_every_record(tmp_path):
    records = curated_pool(600)
    records[5] = {"key": "never-curated", "alt": "x"}
    path = tmp_path / "pool.jsonl"
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    rejects, stats = tmp_path / "rejects.jsonl", tmp_path / "stats.json"
    args = ["mix", str(path), "--online-curation", "--keys", "alt", "--seed", "3"]
    epochs = []
    for epoch in (0, 1):
        with pytest.raises(SystemExit) as done:
            main(
                [*args, "--epoch", str(epoch), "-o", str(tmp_path / f"e{epoch}.jsonl"),
                 "--stats", str(stats), "--rejects", str(rejects)]
            )  # fmt: skip
        assert done.value.code == 0
        counts = orjson.loads(stats.read_bytes())
        assert counts["balanced"] and counts["in"] == 600
        assert counts["rejected"] == {"no-curate-p": 1}
        assert counts["out"] + counts["dropped"]["online-curation"] + 1 == 600
        epochs.append(
            [orjson.loads(line)["key"] for line in (tmp_path / f"e{epoch}.jsonl").open("rb")]
        )
        assert orjson.loads(rejects.read_bytes())["record"]["key"] == "never-curated"
    assert epochs[0] != epochs[1]
    assert set(epochs[0]) == drawn_keys(records, 0, seed=3)[0]


# -- K captions without replacement (train --positives K) ------------------------------------


def test_draw_k_starts_with_the_single_draw_and_never_repeats_a_caption():
    draw = CaptionDraw(("alt", "vecap"), (0.3, 0.7), seed=2)
    record = {"alt": "a", "vecap": ["v0", "v1", "v2"]}
    for i in range(300):
        got = draw.draw_k(record, f"k{i}", 1, 3)
        assert got[0] == draw(record, f"k{i}", 1)
        assert len(got) == 3 and len({text for _, text in got}) == 3
        assert all(text in (["a"] if name == "alt" else record["vecap"]) for name, text in got)
        assert got == draw.draw_k(record, f"k{i}", 1, 3)  # a function of (seed, key, epoch)
    # all four, in any order, when K is the record's number of captions
    assert sorted(t for _, t in draw.draw_k(record, "x", 0, 4)) == ["a", "v0", "v1", "v2"]


def test_draw_k_gives_fewer_when_the_record_has_fewer_distinct_captions():
    draw = CaptionDraw(("alt", "vecap"), None, seed=0)
    got = draw.draw_k({"alt": "same", "vecap": ["same", " "]}, "k", 0, 3)
    assert [text for _, text in got] == ["same"]  # the one distinct caption, once
    assert draw.draw_k({"alt": 5}, "k", 0, 2) == []
    weightless = CaptionDraw(("alt", "vecap"), (1.0, 0.0), seed=0)
    assert weightless.draw_k({"alt": "a", "vecap": "v"}, "k", 0, 2) == [("alt", "a")]


def test_draw_k_draws_each_field_by_its_weight_and_epochs_draw_anew():
    draw = CaptionDraw(("alt", "vecap"), (0.2, 0.8), seed=3)
    record = {"alt": "a", "vecap": ["v0", "v1", "v2", "v3"]}
    pairs = [draw.draw_k(record, f"k{i}", 0, 2) for i in range(20_000)]
    with_alt = sum(any(name == "alt" for name, _ in pair) for pair in pairs) / len(pairs)
    # alt first (0.2), else second: 0.2 of the weight among alt and vecap's three left
    assert abs(with_alt - (0.2 + 0.8 * 0.2)) < 0.015
    again = [draw.draw_k(record, f"k{i}", 1, 2) for i in range(200)]
    assert again != pairs[:200]


# -- presets ------------------------------------------------------------------------------------


def test_presets_are_the_published_mixes():
    got = {name: (p.keys, p.probs) for name, p in PRESETS.items()}
    assert got == {
        "veclip": (("alt", "vecap"), (0.5, 0.5)),
        "recap": (("alt", "vecap"), (0.2, 0.8)),
        "metaclip12": (("alt", "vecap"), (0.85, 0.15)),
    }
    for p in PRESETS.values():
        MixConfig(keys=p.keys, probs=p.probs)  # valid mixes


def test_a_preset_with_its_own_flags_is_refused():
    assert preset_mix(None, ("x",), None, ("--keys", "--probs")) == (("x",), None)
    assert preset_mix("recap", None, None, ("--keys", "--probs")) == (("alt", "vecap"), (0.2, 0.8))
    with pytest.raises(ValueError, match="--preset: sets --keys and --probs itself"):
        preset_mix("veclip", None, (0.5, 0.5), ("--keys", "--probs"))


def test_mix_preset_draws_its_ratio(tmp_path, capsys):
    records = [{"key": f"k{i}", "alt": "a", "vecap": "v"} for i in range(4000)]
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    with pytest.raises(SystemExit) as done:
        main(["mix", str(src), "-o", str(tmp_path / "out.jsonl"), "--preset", "metaclip12"])
    assert done.value.code == 0
    texts = Counter(orjson.loads(x)["text"] for x in (tmp_path / "out.jsonl").read_bytes().split())
    assert abs(texts["v"] / 4000 - 0.15) < 0.02
    with pytest.raises(SystemExit) as done:
        main(["mix", str(src), "--preset", "recap", "--keys", "alt"])
    err = capsys.readouterr().err
    assert done.value.code == 2 and "--preset: sets --keys and --probs itself" in err, err


def test_all_refuses_a_field_of_more_captions_than_it_may_multiply():
    """Each caption becomes a record carrying the whole one: a web record's list of
    thousands would write its square; it is a counted rejection instead."""
    from vecap_cli.steps.mix import MAX_CAPTIONS

    records = [
        {"key": "big", "alt": "a", "vec": [f"c{i}" for i in range(MAX_CAPTIONS + 1)]},
        {"key": "ok", "alt": "a", "vec": [f"c{i}" for i in range(MAX_CAPTIONS)]},
    ]
    out, tally = run(records, policy="all", keys=("alt", "vec"))
    assert len(out) == MAX_CAPTIONS + 1 and {r["key"][:2] for r in out} == {"ok"}
    assert dict(tally.rejected) == {"too-many-captions": 1}
    # drawing one caption is no multiplication: the same record trains
    drawn, _ = run(records[:1], keys=("alt", "vec"))
    assert len(drawn) == 1
