"""MetaCLIP v1 substring matching: entry e matches a text when " e " is a substring
of the text spaced as MetaCLIP spaces it (`metaclip/substr_matching.py`).

Spacing wraps the text in spaces, surrounds each of , . ; : ? ! and ` with spaces,
and turns tab, newline and CR into spaces; matching is case-sensitive. Entries are
not spaced, so an entry holding one of those characters next to another character
("U.S.", "Yahoo!") can never match, while a lone "." matches any text with a dot:
both exactly as in MetaCLIP.

The automaton is pyahocorasick's, one per process, holding " e " for every entry.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

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


class Matcher:
    """`matcher(text)` -> the sorted ids of the entries that match `text`.

    `matcher.find` is the same call as a plain function, for hot loops (calling
    an instance costs a method lookup per record). An entry listed twice
    matches under every id it has (pyahocorasick keeps one value per word, so
    the other ids are kept beside the automaton).
    """

    def __init__(self, entries: Sequence[str]):
        import ahocorasick  # C extension; loads only when matching runs

        automaton = ahocorasick.Automaton(ahocorasick.STORE_INTS)
        first: dict[str, int] = {}
        also: dict[int, list[int]] = {}  # first id -> the ids of its repeats
        for idx, entry in enumerate(entries):
            if entry in first:
                also.setdefault(first[entry], []).append(idx)
                continue
            first[entry] = idx
            automaton.add_word(f" {entry} ", idx)
        if first:
            automaton.make_automaton()
            self.find = _finder(automaton.iter, also)
        else:
            self.find = lambda text: []  # an automaton with no words cannot search
        self.n_entries = len(entries)

    def __call__(self, text: str) -> list[int]:
        return self.find(text)


def _finder(search, also: dict[int, list[int]]):
    def find(text: str) -> list[int]:
        # The per-record hot path: spacing inlined, one C iterator, one set.
        spaced = f" {text} "
        for char, wrapped in _WRAP:
            if char in spaced:
                spaced = spaced.replace(char, wrapped)
        if "\t" in spaced or "\n" in spaced or "\r" in spaced:
            spaced = spaced.replace("\t", " ").replace("\n", " ").replace("\r", " ")
        ids = {idx for _, idx in search(spaced)}
        if not ids:
            return []
        if also:
            for idx in [i for i in ids if i in also]:
                ids.update(also[idx])
        return sorted(ids)

    return find
