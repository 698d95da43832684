"""Filters that run before matching, each optional and counted under its own rule.

MetaCLIP curates raw AltTexts as they are; these are the usual cheap cleanups a
pool gets first: exact duplicates, DataComp's basic caption filter, HTML.
"""

from __future__ import annotations

import html
import re
from hashlib import blake2b

DEDUP_KINDS = ("url", "text")

_TAG = re.compile(r"<[^>]*>")


def strip_html(text: str) -> str:
    """Tags out (each becomes a space, so "a<br>b" stays two words), then entities
    unescaped (so an escaped "&lt;3" survives as "<3")."""
    if "<" in text:
        text = _TAG.sub(" ", text)
    if "&" in text:
        text = html.unescape(text)
    return text


def basic_text_filter(text: str) -> bool:
    """DataComp's basic caption filter: more than 2 words and more than 5 characters."""
    return len(text) > 5 and len(text.split()) > 2


def normalize(text: str) -> str:
    """What makes two texts "the same" for dedup: case and runs of whitespace ignored."""
    return " ".join(text.casefold().split())


def _digest(value: str) -> int:
    # 64 bits, deterministic (the built-in hash() is salted per process). A false
    # duplicate needs a collision: odds about n^2 / 2^65 for n records in one
    # process, ~3% for a billion, and then one record is lost.
    return int.from_bytes(blake2b(value.encode(), digest_size=8).digest(), "little")


class Dedup:
    """Exact duplicates by url and/or normalized text, first occurrence kept.

    State lives in this process: a pool split over ranks is deduplicated within
    each rank's share.
    """

    def __init__(self, kinds: tuple[str, ...]):
        unknown = set(kinds) - set(DEDUP_KINDS)
        if unknown:
            raise ValueError(f"unknown dedup kind {sorted(unknown)[0]!r} (choose url, text)")
        self._url = "url" in kinds
        self._text = "text" in kinds
        self._seen_url: set[int] = set()
        self._seen_text: set[int] = set()

    def rule(self, record: dict, text: str) -> str | None:
        """'duplicate-url' or 'duplicate-text' when seen before, else None (and remember it)."""
        if self._url:
            url = record.get("url")
            if isinstance(url, str) and url:
                digest = _digest(url)
                if digest in self._seen_url:
                    return "duplicate-url"
                self._seen_url.add(digest)
        if self._text:
            digest = _digest(normalize(text))
            if digest in self._seen_text:
                return "duplicate-text"
            self._seen_text.add(digest)
        return None


class Screen:
    """The filters a config asks for, in order: HTML cleanup, the text filter, dedup.

    `screen(record, text)` -> (the text to match, the rule that removes the
    record or ""). Counts the texts HTML cleanup changed in `cleaned`.
    """

    def __init__(self, config):
        self.html = config.html
        self.text_filter = config.text_filter
        self.dedup = Dedup(config.dedup) if config.dedup else None
        self.cleaned = 0

    def __call__(self, record: dict, text: str) -> tuple[str, str]:
        if self.html:
            clean = strip_html(text)
            self.cleaned += clean != text
            text = clean
        if self.text_filter and not basic_text_filter(text):
            return text, "text-filter"
        if self.dedup is not None:
            return text, self.dedup.rule(record, text) or ""
        return text, ""
