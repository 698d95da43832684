"""Matching is MetaCLIP v1's rule, id for id: " e " in the spaced text, case-sensitive."""

import os

import orjson
import pytest

from tests.conftest import SHARED_DATA
from vecap_cli.steps.curate.matching import Matcher, can_match, spacing
from vecap_cli.steps.curate.metadata import build, wordnet_names

WORDNET = "/usr/share/wordnet"


def v1_spacing(text: str) -> str:
    """MetaCLIP's `spacing`, written out as its source does it."""
    spaced = f" {text} "
    for punct in [",", ".", ";", ":", "?", "!", "`"]:
        spaced = spaced.replace(punct, f" {punct} ")
    for char in ["\t", "\n", "\r"]:
        spaced = spaced.replace(char, " ")
    return spaced


def naive(text: str, entries: list[str], ids=None) -> list[int]:
    """The v1 rule as a plain loop over entries (`ids`: those to try, default all)."""
    spaced = v1_spacing(text)
    padded = [f" {e} " for e in entries] if ids is None else entries
    return [i for i in (range(len(entries)) if ids is None else ids) if padded[i] in spaced]


EDGE_ENTRIES = [
    "dog", "hot dog", "Dog", "t-shirt", "shirt", "dog's", "rock 'n' roll", "U.S.", ".",
    "Yahoo!", "café", "日本", "new york", "a", "e.g", "dog ,", "naïve", "", "x  y", "3",
    "3.5", "C++", "(dog)", "dog dog", "!", "dog", "'", "ß", "😀",
]  # fmt: skip
EDGE_TEXTS = [
    "hot dog, yes", "Hot Dog", "DOG", "t-shirt", "the dog's bone", "U.S. army", "Yahoo! Mail",
    "café au lait", "日本 語", "日本語", "new\nyork", "new\tyork", "new  york", "new york!",
    "e.g. this", "3.5 inch", "C++ code", "(dog) house", "dog dog dog", "", " ", "x  y",
    " dog ", "dog,dog", "naïve", "nai\u0308ve", "`dog`", "dog;cat:bird?fish!", "dog\r\n",
    "rock 'n' roll", "'", "STRASSE ß", "😀 dog", "a\u00a0dog", "dog.", ".dog", "!",
]  # fmt: skip


def test_spacing_is_metaclips():
    for text in EDGE_TEXTS:
        assert spacing(text) == v1_spacing(text)


@pytest.mark.parametrize("text", EDGE_TEXTS)
def test_edge_cases_agree_with_the_naive_rule(text):
    assert Matcher(EDGE_ENTRIES)(text) == naive(text, EDGE_ENTRIES)


def test_a_batch_matches_as_its_texts_do_one_by_one():
    # one automaton pass over the texts joined: no match may leak into a neighbour
    # (texts ending or starting in spaces, empty texts, punctuation at the joins)
    matcher = Matcher(EDGE_ENTRIES)
    texts = EDGE_TEXTS + EDGE_TEXTS[::-1]
    assert matcher.find_many(texts) == [naive(text, EDGE_ENTRIES) for text in texts]
    assert matcher.find_many([]) == []
    assert matcher.find_many(["", ""]) == [naive("", EDGE_ENTRIES)] * 2


def test_the_batch_separator_in_a_text_or_an_entry_still_matches_by_the_rule():
    texts = ["a dog\x00 cat", "dog", "\x00"]  # a text holding the separator: one by one
    assert Matcher(EDGE_ENTRIES).find_many(texts) == [naive(t, EDGE_ENTRIES) for t in texts]
    entries = ["dog", "x\x00y", "cat"]  # an entry holding it: never batched
    texts = ["a dog", "x\x00y and a cat", "x y"]
    assert Matcher(entries).find_many(texts) == [[0], [1, 2], []]
    assert Matcher(entries)("x\x00y") == [1]
    assert Matcher([]).find_many(["dog", ""]) == [[], []]


def names(text: str) -> set[str]:
    return {EDGE_ENTRIES[i] for i in Matcher(EDGE_ENTRIES)(text)}


def test_the_rule_in_words():
    assert {"hot dog", "dog", "a"} & names("hot dog, a dog") == {"hot dog", "dog", "a"}
    assert "dog" not in names("DOG") and "Dog" not in names("DOG")  # case-sensitive
    assert names("t-shirt") == {"t-shirt"}  # a hyphen joins: "shirt" alone does not match
    assert "dog" not in names("the dog's bone") and "dog's" in names("the dog's bone")
    assert "U.S." not in names("U.S. army")  # its dots are spaced apart in the text
    assert {".", "dog ,", "dog"} <= names("dog, dog.")  # "." and "dog ," do match
    assert "3" in names("3.5 inch") and "3.5" not in names("3.5 inch")
    assert "日本" in names("日本 語") and "日本" not in names("日本語")
    assert "naïve" in names("naïve") and "naïve" not in names("nai\u0308ve")  # no normalization
    assert "new york" in names("new\nyork") and "new york" not in names("new  york")
    assert "dog" not in names("a\u00a0dog")  # only spaces (and tab, newline, CR) separate


def test_an_entry_listed_twice_matches_under_both_ids():
    assert Matcher(["cat", "dog", "cat"])("a cat") == [0, 2]


def test_a_base_shifts_every_id_and_nothing_else():
    """A language's automaton under metaclip2 holds global ids: base + its own."""
    texts = [*EDGE_TEXTS, "a\x00dog"]  # the separator in a text: matched one by one
    entries = [*EDGE_ENTRIES, "cat", "cat"]
    shifted = Matcher(entries, base=100)
    expected = [[100 + e for e in naive(t, entries)] for t in texts]
    assert shifted.find_many(texts) == expected
    assert [shifted(t) for t in texts] == expected


def test_no_entries_match_nothing():
    assert Matcher([])("anything") == []


def test_can_match_agrees_with_the_rule_on_what_it_calls_dead():
    dead = [e for e in EDGE_ENTRIES if not can_match(e)]
    assert set(dead) == {"U.S.", "Yahoo!", "3.5", "e.g"}
    assert all(not naive(text, dead) for text in EDGE_TEXTS)


def by_token(entries: list[str]) -> tuple[dict[str, list[int]], list[int]]:
    """Entry ids by their first space-separated piece, and the ids with no piece."""
    index: dict[str, list[int]] = {}
    blank = []
    for i, entry in enumerate(entries):
        pieces = [p for p in entry.split(" ") if p]
        if pieces:
            index.setdefault(pieces[0], []).append(i)
        else:
            blank.append(i)
    return index, blank


@pytest.mark.skipif(
    not (SHARED_DATA / "laion-alt-10k.jsonl").exists() or not os.path.isdir(WORDNET),
    reason="needs ../shared/data/laion-alt-10k.jsonl and WordNet (apt-get install wordnet-base)",
)
def test_agrees_id_for_id_with_the_naive_rule_on_10k_laion_alttexts_and_wordnet():
    entries, _ = build([("wordnet", wordnet_names(WORDNET))], 500_000)
    assert len(entries) > 80_000
    texts = [
        orjson.loads(line)["alt"]
        for line in (SHARED_DATA / "laion-alt-10k.jsonl").read_bytes().splitlines()
    ]
    matcher = Matcher(entries)
    padded = [f" {e} " for e in entries]
    # The plain loop over 86k entries for all 10k texts takes minutes, so for each
    # text it tries only the entries whose first piece is one of the text's
    # space-separated pieces: a piece of " e " bounded by spaces is bounded by
    # spaces in the text too, so no other entry can match. The full loop runs on a
    # sample, to check that shortcut.
    index, blank = by_token(entries)
    matched = 0
    for n, text in enumerate(texts):
        pieces = set(v1_spacing(text).split(" "))
        tried = sorted({i for p in pieces for i in index.get(p, ())} | set(blank))
        expected = naive(text, padded, tried)
        if n % 50 == 0:
            assert naive(text, padded, range(len(entries))) == expected
        assert matcher(text) == expected, text
        matched += bool(expected)
    assert matcher.find_many(texts) == [matcher(text) for text in texts]  # one batch
    assert matched > 4000  # the comparison is not vacuous
