"""What a model answer must not be, whichever backend wrote it: model answers are data.

A caption (`vec`) or a fused caption (`vecap`) is training text. A model that
read an injected instruction (in an AltText, or written in the image) may answer
with a link, an address or an order instead of a caption; a broken server may
answer with control bytes or a book. `refusal(text, given, max_chars)` names
the first such fault as a short reason, or None:

- `empty`, `control-chars` (C0/C1 controls but tab and newline, bidi overrides),
  `too-long` (more than `max_chars` characters);
- `url`, `email`, `instruction` (ignore/disregard previous instructions, system
  prompt, as an AI, visit/click/go to ...), unless that very text is in `given`,
  the inputs the model was shown: an AltText that names "www.nasa.gov" may be
  fused into a caption that names it too.

The patterns err towards refusing: a refused rewrite keeps the VeC, a refused
caption is a counted rejection that a rerun can retry.
"""

from __future__ import annotations

import re
import unicodedata

# A token is ~4 characters of English; 16 bounds any tokenizer's worst case
# without cutting a real caption (a server that ignores max_tokens is caught).
CHARS_PER_TOKEN = 16

_BIDI = frozenset("\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")

_TLDS = (
    "com|net|org|info|biz|io|co|ai|app|dev|xyz|top|site|online|shop|store|club|link|"
    "click|ly|me|tv|ru|cn|de|uk|fr|jp|br|in|us|eu|nl|it|es|pl|au|ca|ch|se|example|test|local"
)
_URL = re.compile(
    r"\b[a-z][a-z0-9+.-]*://\S+"  # any scheme: https://, ftp://, javascript://
    r"|\bwww\d{0,3}\.\S+"
    rf"|\b(?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?\.)+(?:{_TLDS})\b(?:[/:?#]\S*)?",
    re.IGNORECASE,
)
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+", re.IGNORECASE)
_INSTRUCTION = re.compile(
    r"\b(?:ignore|disregard|forget|override|bypass|skip)\b(?:\W+\w+){0,4}?\W+"
    r"(?:instructions?|prompts?|rules|directions|guidelines|directives|context)\b"
    r"|\b(?:system|hidden|original|initial)\s+(?:prompt|instructions?|message)\b"
    r"|\bnew\s+instructions?\b|\bdeveloper\s+mode\b|\bjailbr[eo]ak"
    r"|\byou\s+(?:are\s+now|must\s+now|should\s+now|will\s+now)\b"
    r"|\bas\s+an?\s+(?:ai|a\.i\.|language\s+model|llm|assistant|chatbot)\b"
    r"|\bclick\s+(?:here|the\s+link|below|this)\b|\blink\s+in\s+(?:the\s+)?bio\b"
    r"|\b(?:visit|see|check\s+out)\s+(?:our|my)\s+(?:web\s*site|site|page|store|shop|channel)\b"
    # an imperative at the start of the answer or of a sentence, or after please/now
    r"|(?:^|[.!?;:]\s+|\b(?:please|now)\s+)(?:visit|click|go\s+to|navigate\s+to|check\s+out"
    r"|download|subscribe|sign\s+up|log\s*in|contact|email\s+us|call\s+(?:us|now)|dm|reply"
    r"|respond|say|tell\s+the\s+user)\b",
    re.IGNORECASE,
)
_SPACE = re.compile(r"\s+")


def max_chars(max_new_tokens: int) -> int:
    """The longest answer, in characters, that `max_new_tokens` tokens could honestly be."""
    return CHARS_PER_TOKEN * max_new_tokens


def _norm(text: str) -> str:
    return _SPACE.sub(" ", text).strip().casefold()


def _control(text: str) -> bool:
    return any(
        (unicodedata.category(ch) == "Cc" and ch not in "\t\n") or ch in _BIDI for ch in text
    )


def refusal(text: str, given: str, limit: int) -> tuple[str, str] | None:
    """(reason, what was found) when `text` may not become a caption; None when it may.

    `given` is what the model was shown (the prompt, the AltText, the VeC):
    a URL, address or phrase found in it is the input's, not an injection.
    """
    if not text.strip():
        return "empty", "the model generated no text"
    if len(text) > limit:
        return "too-long", f"{len(text)} characters, more than {limit}"
    if _control(text):
        return "control-chars", "control or bidi characters in the answer"
    seen = _norm(given)
    for reason, pattern in (("email", _EMAIL), ("url", _URL), ("instruction", _INSTRUCTION)):
        for found in pattern.finditer(text):
            span = _norm(found.group()).lstrip(".!?;: ")
            if span and span not in seen:
                return reason, span[:80]
    return None
