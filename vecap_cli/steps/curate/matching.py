"""MetaCLIP substring matching: entry e matches a text when e, padded by its rule, is
a substring of the text spaced as MetaCLIP spaces it (`metaclip/substr_matching.py`).

Two rules (`MATCH_RULES`), differing only in how an entry is padded:

- v1: " e " (MetaCLIP v1).
- metaclip2: a space before e unless its first character is CJK-or-similar, a
  space after unless its last is (MetaCLIP 2, `metaclip/curation/substr_matching.py`,
  `get_spaced_metadata`): CJK ideographs, Thai, Lao, Burmese, Khmer, Tibetan, and
  punctuation (ASCII's and 23 CJK marks) are written without spaces around words,
  so "写真" matches "ストック写真" and "商品" matches "[入荷予約商品]". Kana and Hangul
  are not in MetaCLIP 2's ranges: such entries are padded, as there.

Spacing wraps the text in spaces, surrounds each of , . ; : ? ! and ` with spaces,
and turns tab, newline and CR into spaces; matching is case-sensitive. Entries are
not spaced, so an entry holding one of those characters next to another character
("U.S.", "Yahoo!") can never match, while a lone "." matches any text with a dot:
both exactly as in MetaCLIP.

The automaton is pyahocorasick's, one per process, holding " e " for every entry.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass

PUNCTUATION = ",.;:?!`"  # wrapped in spaces
WHITESPACE = "\t\n\r"  # replaced by a space

# (char, replacement); `in` before `replace` is ~2x faster than bare replaces on
# short texts, where most of these characters are absent.
_WRAP = tuple((p, f" {p} ") for p in PUNCTUATION)


def spacing(text: str) -> str:
    """The text as MetaCLIP v1 matches against it."""
    spaced = f" {text} "
    for char, wrapped in _WRAP:
        if char in spaced:
            spaced = spaced.replace(char, wrapped)
    if "\t" in spaced or "\n" in spaced or "\r" in spaced:
        spaced = spaced.replace("\t", " ").replace("\n", " ").replace("\r", " ")
    return spaced


_NEAR_PUNCT = re.compile(r" ?([,.;:?!`]) ?")


def can_match(entry: str) -> bool:
    """Whether any text matches `entry` under the v1 rule: False for "U.S." or
    "Yahoo!" (spacing splits the text's punctuation from its neighbours), True
    for "." or "dog ," (which match "dog,").

    The text "entry with the spaces around its punctuation removed" matches
    whenever any text does, so trying that one text decides it.
    """
    return f" {entry} " in spacing(_NEAR_PUNCT.sub(r"\1", entry))


def pad_v1(entry: str) -> str:
    return f" {entry} "


# MetaCLIP 2's `additional_punctuation`, beside string.punctuation
_CJK_PUNCTUATION = "，。、；：？！“”‘’（）【】《》〈〉「」『』～—"
_UNSPACED_PUNCTUATION = frozenset(string.punctuation + _CJK_PUNCTUATION)
# MetaCLIP 2's `is_cjk_or_similar` ranges, inclusive: CJK ideographs (unified,
# extensions A-F, compatibility, radicals, Kangxi, description characters), then
# Thai, Lao, Burmese, Khmer, Tibetan.
_UNSPACED_RANGES = (
    (0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F), (0x2B820, 0x2CEAF), (0x2CEB0, 0x2EBEF), (0xF900, 0xFAFF),
    (0x2E80, 0x2EFF), (0x2F00, 0x2FDF), (0x2FF0, 0x2FFF),
    (0x0E00, 0x0E7F), (0x0E80, 0x0EFF), (0x1000, 0x109F), (0x1780, 0x17FF), (0x0F00, 0x0FFF),
)  # fmt: skip


def unspaced(char: str) -> bool:
    """Whether MetaCLIP 2 leaves an entry bounded by `char` unpadded on that side."""
    code = ord(char)
    if code < 0x0E00:  # below Thai: only ASCII punctuation (the hot case, Latin entries)
        return char in _UNSPACED_PUNCTUATION
    return char in _UNSPACED_PUNCTUATION or any(lo <= code <= hi for lo, hi in _UNSPACED_RANGES)


def pad_metaclip2(entry: str) -> str:
    """MetaCLIP 2's padding; an empty entry (MetaCLIP 2 fails on it) is padded as in v1."""
    if not entry:
        return "  "
    head = "" if unspaced(entry[0]) else " "
    tail = "" if unspaced(entry[-1]) else " "
    return f"{head}{entry}{tail}"


@dataclass(frozen=True)
class MatchRule:
    name: str
    help: str
    pad: Callable[[str], str]  # entry -> the automaton's word
    per_language: bool  # texts are language-identified and matched against their language's list


MATCH_RULES = {
    rule.name: rule
    for rule in (
        MatchRule("v1", "MetaCLIP v1: one entry list, ' e ' in the spaced text.", pad_v1, False),
        MatchRule(
            "metaclip2",
            "MetaCLIP 2 (worldwide): language identification, one entry list per "
            "language, entries bounded by CJK, Thai, Lao, Burmese, Khmer, Tibetan or "
            "punctuation not padded, a t per language.",
            pad_metaclip2,
            True,
        ),
    )
}


# Joins the texts of a batch, so that one automaton pass matches them all: the
# spaced batch is the spaced texts joined by it, and no entry holding it is batched.
SEP = "\x00"


class Matcher:
    """`matcher(text)` -> the sorted ids of the entries that match `text`;
    `matcher.find_many(texts)` -> one such list per text.

    `find_many` is the fast path: it spaces the texts joined by SEP as one string
    and runs the automaton over it once. The scan itself then takes about a third
    of the time of one pass per text (each pass pays a setup and finds the
    automaton's memory cold); sorting the hits back into texts gives some of that
    back, and the whole call takes ~85% of the time of `find` on each text.
    A match cannot span two texts, as no entry word holds SEP; SEP itself is a word
    whose hits mark where each text ends. A batch with a text holding SEP, or a
    list with an entry holding it, is matched text by text.

    `matcher.find` is the one-text call as a plain function. An entry listed twice
    matches under every id it has (pyahocorasick keeps one value per word, so the
    other ids are kept beside the automaton).
    """

    def __init__(self, entries: Sequence[str], pad: Callable[[str], str] = pad_v1, base: int = 0):
        """`base`: the id of the first entry (a language's list among several)."""
        import ahocorasick  # C extension; loads only when matching runs

        automaton = ahocorasick.Automaton(ahocorasick.STORE_INTS)
        first: dict[str, int] = {}
        also: dict[int, list[int]] = {}  # first id -> the ids of its repeats
        for idx, entry in enumerate(entries, base):
            word = pad(entry)
            if word in first:
                also.setdefault(first[word], []).append(idx)
                continue
            first[word] = idx
            automaton.add_word(word, idx)
        self.n_entries = len(entries)
        if not first:  # an automaton with no words cannot search
            self.find = lambda text: []
            self.find_many = lambda texts: [[] for _ in texts]
            return
        end = base + len(entries)  # the id of SEP's hits: no entry has it
        batched = not any(SEP in entry for entry in first)
        if batched:
            automaton.add_word(SEP, end)
        automaton.make_automaton()
        self.find = _finder(automaton.iter, also, end if batched else None)
        if batched:
            self.find_many = _batch_finder(automaton.iter, also, end, self.find)
        else:
            self.find_many = lambda texts: [self.find(text) for text in texts]

    def __call__(self, text: str) -> list[int]:
        return self.find(text)


def _finder(search, also: dict[int, list[int]], end: int | None):
    def find(text: str) -> list[int]:
        # spacing inlined, one C iterator, one set
        spaced = f" {text} "
        for char, wrapped in _WRAP:
            if char in spaced:
                spaced = spaced.replace(char, wrapped)
        if "\t" in spaced or "\n" in spaced or "\r" in spaced:
            spaced = spaced.replace("\t", " ").replace("\n", " ").replace("\r", " ")
        ids = {idx for _, idx in search(spaced)}
        if not ids:
            return []
        if end is not None and SEP in text:
            ids.discard(end)
        return _sorted(ids, also)

    return find


def _batch_finder(search, also: dict[int, list[int]], end: int, find):
    joiner = f" {SEP} "

    def find_many(texts: list[str]) -> list[list[int]]:
        joined = joiner.join(texts)
        if joined.count(SEP) != len(texts) - 1:  # a text holds SEP (or there is none)
            return [find(text) for text in texts]
        spaced = spacing(joined)  # " a " SEP " b ": the texts spaced one by one, joined
        found: list[list[int]] = []
        ids: list[int] = []
        for _, idx in search(spaced):  # hits in text order; SEP's close a text
            if idx == end:
                found.append(ids)
                ids = []
            else:
                ids.append(idx)
        found.append(ids)
        if also:
            return [_sorted(set(ids), also) if ids else ids for ids in found]
        return [sorted(set(ids)) if len(ids) > 1 else ids for ids in found]

    return find_many


def _sorted(ids: set[int], also: dict[int, list[int]]) -> list[int]:
    """`ids` with the repeats of the entries listed twice, sorted."""
    if also:
        for idx in [i for i in ids if i in also]:
            ids.update(also[idx])
    return sorted(ids)
