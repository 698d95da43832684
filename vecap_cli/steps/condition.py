"""`vecap caption --condition-on FIELD`: a caption written seeing the AltText too.

Altogether / MetaCLIP 1.2's idea: a captioner shown the image and its AltText
re-aligns the AltText in one pass (instead of caption, then rewrite): it keeps
the names and numbers the image supports and describes what is visible. The
answer is a VeCap, written to `vecap`.

The AltText is hostile web text, so it enters the prompt only as data: a JSON
string literal (quotes, backslashes escaped), on one line (whitespace runs,
newlines included, become one space), without control or bidi characters, with
`<` and `>` escaped (`\\u003c`, `\\u003e`) so that no AltText can write the
`</alttext>` marker that closes it, and cut to `MAX_CONDITION_CHARS`
characters. The prompt is a template (condition.txt beside this module, or the
user's `--prompt-file`) in which `{alt}` becomes that literal; it is a plain
replacement, so the template's own braces stay as written and an AltText
holding "{alt}" is not expanded again.

The conditioning text of a record is its FIELD when that is a non-blank string,
or, for a list, its first non-blank string item; a record without one (missing,
blank, not text) is rejected as `condition-missing`, never captioned without it.
"""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path

PLACEHOLDER = "{alt}"
MAX_CONDITION_CHARS = 500  # web AltTexts run to pages; the names are in the first lines
DEFAULT_TEMPLATE = Path(__file__).with_name("condition.txt")
_BIDI = frozenset("\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


class ConditionMissing(ValueError):
    """A record without a usable conditioning text (rejected, counted)."""

    reason = "condition-missing"


class PromptError(ValueError):
    """A prompt that cannot serve (a usage error of `flag`)."""

    def __init__(self, message: str, flag: str):
        super().__init__(message)
        self.flag = flag


def condition_text(record: dict, field: str) -> str:
    """The record's conditioning text: `field` as a non-blank string, or a list's
    first non-blank string; ConditionMissing otherwise."""
    value = record.get(field)
    if isinstance(value, list):
        value = next((v for v in value if isinstance(v, str) and v.strip()), None)
        if value is None:
            raise ConditionMissing(f"`{field}` is a list without a non-blank string")
    if value is None:
        raise ConditionMissing(f"no `{field}`")
    if not isinstance(value, str):
        raise ConditionMissing(f"`{field}` is {type(value).__name__}, not text")
    if not value.strip():
        raise ConditionMissing(f"`{field}` is blank")
    return value


def quote(text: str, limit: int = MAX_CONDITION_CHARS) -> str:
    """`text` as data: one JSON string literal on one line, no control or bidi
    characters, no `<` or `>`, at most `limit` characters of text."""
    kept = "".join(" " if _dropped(ch) else ch for ch in text)
    kept = " ".join(kept.split())[:limit]
    return json.dumps(kept, ensure_ascii=False).replace("<", "\\u003c").replace(">", "\\u003e")


def _dropped(ch: str) -> bool:
    return unicodedata.category(ch) == "Cc" or ch in _BIDI or ch in "\u2028\u2029"


def render(template: str, text: str) -> str:
    """The prompt for one record: `template` with its `{alt}` as `text`, quoted."""
    return template.replace(PLACEHOLDER, quote(text))


def instruction(template: str) -> str:
    """What the model was told besides the data: the template without `{alt}`. An
    answer is checked against this alone, so that a URL or an order that only the
    AltText holds is refused (caption-url, caption-instruction), not let through."""
    return template.replace(PLACEHOLDER, "")


def resolve_prompt(
    prompt: str, prompt_file: str | None, condition_on: str | None, default_prompt: str
) -> str:
    """The prompt caption sends: --prompt-file's text, else with --condition-on the
    shipped template (unless --prompt was given), else --prompt. Conditioned, it must
    name `{alt}`; unconditioned, it must not (the user meant --condition-on)."""
    flag, what = "--prompt", "the prompt"
    if prompt_file is not None:
        if prompt != default_prompt:
            raise PromptError("give --prompt or --prompt-file, not both", "--prompt-file")
        prompt, flag, what = _read(prompt_file), "--prompt-file", f"'{prompt_file}'"
    elif condition_on is not None and prompt == default_prompt:
        return DEFAULT_TEMPLATE.read_text(encoding="utf-8")
    if condition_on is not None and PLACEHOLDER not in prompt:
        raise PromptError(f"{what} lacks {PLACEHOLDER}, where --condition-on's text goes", flag)
    if condition_on is None and PLACEHOLDER in prompt:
        raise PromptError(f"{what} names {PLACEHOLDER}, which only --condition-on fills", flag)
    return prompt


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as err:
        why = err.strerror if isinstance(err, OSError) else "not UTF-8 text"
        raise PromptError(f"cannot read '{path}': {why}", "--prompt-file") from None
    if not text.strip():
        raise PromptError(f"'{path}' is empty", "--prompt-file")
    return text
