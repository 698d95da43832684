"""The check before fusion: an AltText that hits the blocklist is not fused.

Its knowledge would be carried into a caption a model trains on, so the record
gets the VeC as its VeCap instead, and is counted. Terms match whole words,
case-insensitively; a term of several words matches them in sequence.
"""

from __future__ import annotations

import re
from importlib import resources

from vecap_cli.errors import VecapError

DEFAULT = "default"  # the small list shipped beside this module


def load_terms(path: str = DEFAULT) -> list[str]:
    """One term a line; blank lines and '#' comments skipped."""
    try:
        if path == DEFAULT:
            text = resources.files(__package__).joinpath("blocklist.txt").read_text("utf-8")
        else:
            with open(path, encoding="utf-8") as f:
                text = f.read()
    except OSError as err:
        raise VecapError(f"cannot read blocklist '{path}': {err.strerror}") from None
    terms = []
    for line in text.splitlines():
        term = line.split("#", 1)[0].strip().lower()
        if term:
            terms.append(term)
    return terms


class Blocklist:
    def __init__(self, terms: list[str]):
        self.terms = terms
        self._pattern = self._guard = None
        if not terms:
            return
        # Longest first, so "sex video" is reported rather than a shorter overlap.
        alternatives = "|".join(
            r"\s+".join(map(re.escape, t.split()))
            for t in sorted(set(terms), key=len, reverse=True)
        )
        # Searched in lower-cased text: re.IGNORECASE would make it several times slower.
        self._pattern = re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)")
        # Most texts hit nothing: one Aho-Corasick pass for each term's longest word
        # (as a substring, so a superset of the whole-word matches) rules them out at
        # a third of the regex's cost, and keeps that cost flat however long the list.
        import ahocorasick  # C extension, shipped for curate's matching

        self._guard = ahocorasick.Automaton(ahocorasick.STORE_INTS)
        for term in terms:
            words = term.split()
            self._guard.add_word(max(words, key=len) if words else term, 1)
        self._guard.make_automaton()

    @classmethod
    def load(cls, path: str = DEFAULT) -> Blocklist:
        return cls(load_terms(path))

    def hit(self, text: str) -> str | None:
        """The first blocked term in `text`, or None."""
        if self._pattern is None:
            return None
        low = text.lower()
        if next(self._guard.iter(low), None) is None:
            return None
        return self._search(low)

    def _search(self, low: str) -> str | None:
        """The first blocked term in lower-cased `low`, by the pattern alone."""
        found = self._pattern.search(low)  # type: ignore[union-attr]
        return found.group() if found else None
