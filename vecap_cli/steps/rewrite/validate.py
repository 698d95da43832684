"""Output validation: what a model wrote becomes a VeCap only if it is one caption.

A failure is a short reason; the stage then keeps the VeC as VeCap and counts
the reason, so no record is lost to a bad generation. Besides the shape of a
caption, the checks every answer gets (`generate.answer`: url, email,
instruction, control-chars, too-long) apply, against the AltText and VeC.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from vecap_cli.generate.answer import max_chars, refusal

_LABEL = re.compile(
    r"^(?:\*\*)?(?:caption|vecap|fused caption|answer|output)\s*(?:\*\*)?\s*:\s*", re.I
)
_REFUSAL = re.compile(
    r"\b(?:i(?:'m| am) (?:sorry|unable|not able)|i can(?:'t|not| not)|i apologi[sz]e"
    r"|as an? (?:ai|language model)\b|i(?:'m| am) (?:an? )?(?:ai|language model)\b"
    r"|cannot (?:help|assist|comply)|can't (?:help|assist|comply)"
    r"|i won't|not appropriate for me)",
    re.IGNORECASE,
)
_QUOTES = frozenset({('"', '"'), ("'", "'"), ("`", "`"), ("“", "”"), ("«", "»")})
_WORDS = re.compile(r"\w+")
ECHO_NGRAM = 5


@dataclass(frozen=True)
class Limits:
    min_words: int = 3
    max_words: int = 60
    max_chars: int = max_chars(77)


def tidy(text: str) -> str:
    """The answer without the wrapping models add: spaces, a 'Caption:' label, quotes."""
    text = text.strip()
    text = _LABEL.sub("", text, count=1).strip()
    if len(text) >= 2 and (text[0], text[-1]) in _QUOTES:
        text = text[1:-1].strip()
    return text


def ngrams(text: str, n: int = ECHO_NGRAM) -> set[tuple[str, ...]]:
    words = _WORDS.findall(text.lower())
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


class Validator:
    def __init__(self, instruction: str, limits: Limits = Limits()):
        self.limits = limits
        self.instruction_grams = ngrams(instruction)

    def check(self, text: str, alt: str, vec: str) -> tuple[str, str | None]:
        """(tidied text, None) when it is a caption, else (text, reason)."""
        text = tidy(text)
        if not text:
            return text, "empty"
        if "\n" in text:
            return text, "not-one-caption"
        n_words = len(text.split())
        if n_words < self.limits.min_words:
            return text, "too-short"
        if n_words > self.limits.max_words:
            return text, "too-long"
        if _REFUSAL.search(text):
            return text, "refusal"
        refused = refusal(text, f"{alt}\n{vec}", self.limits.max_chars)
        if refused is not None:  # a link, address or instruction the inputs did not hold
            return text, refused[0]
        echoed = ngrams(text) & self.instruction_grams
        if echoed and echoed - ngrams(f"{alt} . {vec}"):
            return text, "echo"
        return text, None
