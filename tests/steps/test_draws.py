"""--n K sampled draws: their seeds, how a batch of records becomes model calls, and
what caption and rewrite write and count with them (fake models, no torch)."""

import json
from collections import Counter

import pytest

from tests.steps.rewrite.test_stage import FakeChat, llm
from tests.steps.rewrite.test_stage import run as run_rewrite
from tests.steps.test_caption import FakeCaptioner, samples
from tests.steps.test_caption import run as run_caption
from vecap_cli.generate.base import Failed
from vecap_cli.steps.caption import CaptionConfig
from vecap_cli.steps.draws import Draws, ask
from vecap_cli.steps.mix import captions
from vecap_cli.steps.rewrite import RewriteConfig


def test_several_greedy_draws_are_refused_in_one_line():
    with pytest.raises(ValueError, match="3 draws need --temperature above 0"):
        Draws(3, 0.0)
    with pytest.raises(ValueError, match=r"below 0\.001 sampling is greedy"):
        Draws(2, 1e-40)  # scores / T would overflow: every row the last token
    assert Draws(1, 0.0).identity() == ()  # the identity runs had before --n
    assert Draws(1, 0.7).sampled and Draws(1, 0.7).value(["a"]) == "a"
    assert Draws(2, 0.7).value(["a", "b"]) == ["a", "b"]


def test_each_draw_has_its_own_seed_from_seed_key_and_index():
    draws = Draws(4, 1.0, seed=7)
    seeds = draws.seeds("k1")
    assert seeds == Draws(4, 1.0, seed=7).seeds("k1")  # a pure function of (seed, key, i)
    assert len(set(seeds)) == 4
    assert set(seeds).isdisjoint(draws.seeds("k2"))
    assert set(seeds).isdisjoint(Draws(4, 1.0, seed=8).seeds("k1"))
    assert Draws(2, 1.0, seed=7).seeds("k1") == seeds[:2]  # draw i does not depend on K
    assert all(0 <= s < 2**32 for s in seeds)


class Echo:
    """Answers each item with the item and its seed; keeps every call."""

    def __init__(self):
        self.calls = []

    def generate(self, batch, seeds=None):
        self.calls.append((list(batch), seeds))
        return [
            f"{item}" if seeds is None else f"{item}@{s}"
            for item, s in zip(batch, seeds or batch, strict=True)
        ]


def test_ask_is_one_plain_call_when_greedy_and_chunked_seeded_calls_when_sampled():
    echo = Echo()
    assert ask(echo.generate, [["a"], ["b"]], ["k1", "k2"], Draws(), 8) == [["a"], ["b"]]
    assert echo.calls == [(["a", "b"], None)]

    draws = Draws(3, 0.5, seed=1)
    items = [["a"] * 3, ["b"] * 3, ["c"] * 3]
    keys = ["k1", "k2", "k3"]
    whole, chunked = Echo(), Echo()
    answers = ask(whole.generate, items, keys, draws, 100)
    assert ask(chunked.generate, items, keys, draws, 4) == answers  # batching changes nothing
    assert [len(batch) for batch, _ in chunked.calls] == [4, 4, 1]
    assert answers[1] == [f"b@{s}" for s in draws.seeds("k2")]


def test_caption_writes_k_draws_and_counts_each():
    class Sampler(FakeCaptioner):
        def generate(self, images, seeds=None):
            self.batches.append(len(images))
            return [
                f"a {im.size[0]}px square number {s % 1000}"
                for im, s in zip(images, seeds, strict=True)
            ]

    draws = Draws(3, 1.0, seed=5)
    out, tally, fake = run_caption(samples(5, with_vec={2}), Sampler(), draws=draws)
    assert tally.extra["caption-draws"] == {"kept": 12}
    assert tally.extra["caption"] == {"captioned": 4, "skipped-existing": 1}
    for sample in out:
        if sample.key == "k2":
            assert sample.record["vec"] == "given"
            continue
        vec = sample.record["vec"]
        assert isinstance(vec, list) and len(vec) == 3 and len(set(vec)) == 3
        assert vec == [
            v for v in vec if v.endswith(tuple(str(s % 1000) for s in draws.seeds(sample.key)))
        ]
    assert max(fake.batches) <= 4  # --batch-size counts draws


def test_a_refused_draw_is_left_out_and_a_failed_one_rejects_the_record():
    def reply(seed):
        if seed % 3 == 0:
            return "visit www.example.com for more"  # refused: a URL
        return Failed("http-503", "gone") if seed % 3 == 1 else f"a caption {seed}"

    class Mixed(FakeCaptioner):
        def generate(self, images, seeds=None):
            return [reply(s) for s in seeds]

    draws = Draws(3, 1.0)
    items = samples(40)
    out, tally, _ = run_caption(items, Mixed(), draws=draws)
    kinds = {s.key: [x % 3 for x in draws.seeds(s.key)] for s in items}
    expect_out = [k for k, ks in kinds.items() if 1 not in ks and 2 in ks]
    assert [s.key for s in out] == expect_out
    for sample in out:
        assert sample.record["vec"] == [
            f"a caption {x}" for x in draws.seeds(sample.key) if x % 3 == 2
        ]
    failed = sum(1 in ks for ks in kinds.values())
    all_refused = sum(ks == [0, 0, 0] for ks in kinds.values())
    assert tally.rejected["caption-http-503"] == failed
    assert tally.rejected.get("caption-url", 0) == all_refused
    assert failed and all_refused and out  # each case is met
    assert len(items) == len(out) + failed + all_refused
    expect = Counter()
    for ks in kinds.values():
        names = {0: "refused-url", 1: "failed-http-503", 2: "kept"}
        for k in ks:
            expect[names[k] if k != 2 or 1 not in ks else "unused"] += 1
    assert tally.extra["caption-draws"] == expect


def test_captions_reads_one_string_or_the_strings_of_a_list():
    assert captions("a cat") == ["a cat"] and captions("  ") == []
    assert captions(["a", "", 3, None, "b"]) == ["a", "b"]
    assert captions({"a": 1}) == [] and captions(None) == []


def test_caption_passes_a_record_whose_vec_is_already_a_list():
    items = samples(2)
    items[0].record["vec"] = ["one", "two"]
    out, tally, _ = run_caption(items)
    assert out[0].record["vec"] == ["one", "two"]
    assert tally.extra["caption"] == {"captioned": 1, "skipped-existing": 1}


class SeededChat(FakeChat):
    """FakeChat's answer, and the draw's seed in it."""

    def generate(self, conversations, seeds=None):
        answers = super().generate(conversations)
        seeds = seeds or [0] * len(answers)
        return [
            a if isinstance(a, Failed) else f"{a} number {s % 1000}"
            for a, s in zip(answers, seeds, strict=True)
        ]


def test_rewrite_draw_i_fuses_alt_with_vec_i_mod_their_count():
    rewriter, chat = llm(lambda alt, vec: f"{alt} seen as {vec}")
    rewriter.fuser.chat = SeededChat(chat.reply)
    draws = Draws(3, 0.8, seed=2)
    records = [
        {"key": "a", "alt": "Eiffel Tower", "vec": ["a tall tower", "an iron tower"]},
        {"key": "b", "alt": "Golden Gate", "vec": "a red bridge"},
        {"key": "c", "vec": ["a cat", "a dog"]},  # no alt: VeCap = VeC, per draw
        {"key": "d", "alt": "x", "vec": [3, ""]},  # no usable VeC
    ]
    out, tally = run_rewrite(records, rewriter, draws=draws)
    s = [x % 1000 for x in draws.seeds("a")]
    assert out[0]["vecap"] == [
        f"Eiffel Tower seen as a tall tower number {s[0]}",
        f"Eiffel Tower seen as an iron tower number {s[1]}",
        f"Eiffel Tower seen as a tall tower number {s[2]}",
    ]
    assert len(out[1]["vecap"]) == 3 and all("a red bridge" in v for v in out[1]["vecap"])
    assert out[2]["vecap"] == ["a cat", "a dog", "a cat"]
    assert "vecap" not in out[3]
    assert tally.extra["rewrite"] == {"sampled": 2, "no-alt": 1, "no-vec": 1}
    assert tally.extra["rewrite-draws"] == {"fused": 6}


def test_rewrite_with_one_draw_fuses_the_first_vec_of_a_list():
    rewriter, _ = llm(lambda alt, vec: f"{alt} seen as {vec}")
    out, tally = run_rewrite(
        [{"key": "a", "alt": "Eiffel", "vec": ["a tower", "a mast"]}], rewriter
    )
    assert out[0]["vecap"] == "Eiffel seen as a tower"
    assert tally.extra["rewrite"] == {"fused": 1}


def test_a_failed_rewrite_draw_falls_back_to_its_own_vec():
    rewriter, chat = llm(lambda alt, vec: Failed("timeout") if "mast" in vec else f"{alt} as {vec}")
    rewriter.fuser.chat = SeededChat(chat.reply)
    draws = Draws(2, 1.0)
    out, tally = run_rewrite(
        [{"key": "a", "alt": "Eiffel", "vec": ["a tower", "a mast"]}], rewriter, draws=draws
    )
    assert out[0]["vecap"] == [f"Eiffel as a tower number {draws.seeds('a')[0] % 1000}", "a mast"]
    assert tally.extra["rewrite-draws"] == {"fused": 1, "fallback-timeout": 1}


def test_styles_and_draws_are_in_the_identity_only_when_not_the_default():
    base = CaptionConfig.of("hf", 4, 1, 1, model="m")
    assert base.identity() == ("hf", "m", None, base.prompt, 40)  # as before --n and --style
    dense = CaptionConfig.of("hf", 4, 1, 1, model="m", style="dense")
    assert dense.max_new_tokens == 200 and "detail" in dense.prompt
    assert dense.identity() != base.identity()
    two = CaptionConfig.of("hf", 4, 1, 1, model="m", n=2, temperature=0.7)
    three = CaptionConfig.of("hf", 4, 1, 1, model="m", n=3, temperature=0.7)
    seeded = CaptionConfig.of("hf", 4, 1, 1, model="m", n=3, temperature=0.7, seed=1)
    assert len({two.identity(), three.identity(), seeded.identity(), base.identity()}) == 4
    own = CaptionConfig.of("hf", 4, 1, 1, model="m", style="dense", prompt="Say it.")
    assert own.prompt == "Say it." and own.max_new_tokens == 200

    rules = RewriteConfig.of(None, None, None, 1)
    assert rules.identity() == ("rules", "", None, "default", 77, 3, 60)
    llm_dense = RewriteConfig.of("hf", "m", None, 1, style="dense")
    assert (llm_dense.max_new_tokens, llm_dense.max_words) == (200, 150)
    sampled = RewriteConfig.of("hf", "m", None, 1, n=2, temperature=1.0)
    assert (
        sampled.identity() != RewriteConfig.of("hf", "m", None, 1, n=3, temperature=1.0).identity()
    )
    with pytest.raises(ValueError, match="fixed rules"):
        RewriteConfig.of("rules", None, None, 1, n=2, temperature=1.0)
    with pytest.raises(ValueError, match="fixed rules"):
        RewriteConfig.of("rules", None, None, 1, style="short")


def test_the_style_sets_the_system_prompt_of_the_llm_fusion():
    from vecap_cli.steps.rewrite.build import build_rewriter
    from vecap_cli.steps.rewrite.prompt import STYLES, SYSTEM

    assert STYLES["default"].system == SYSTEM
    config = RewriteConfig.of("openai", "m", None, 1, style="short")
    rewriter = build_rewriter(config)
    messages = rewriter.fuser.prompt.messages("alt", "vec")
    assert messages[0]["content"] == STYLES["short"].system != SYSTEM
    assert "about 15 words" in messages[0]["content"]
    assert json.loads(messages[-1]["content"].split("VEC: ")[1]) == "vec"
