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
        if not terms:
            self._pattern = None
            return
        # Longest first, so "sex video" is reported rather than a shorter overlap.
        alternatives = "|".join(
            r"\s+".join(map(re.escape, t.split()))
            for t in sorted(set(terms), key=len, reverse=True)
        )
        # Searched in lower-cased text: re.IGNORECASE would make it several times slower.
        self._pattern = re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)")

    @classmethod
    def load(cls, path: str = DEFAULT) -> Blocklist:
        return cls(load_terms(path))

    def hit(self, text: str) -> str | None:
        """The first blocked term in `text`, or None."""
        if self._pattern is None:
            return None
        found = self._pattern.search(text.lower())
        return found.group() if found else None
