"""Several texts per record (alt, title, a field holding a list), and the matches of each.

MetaCLIP 2 matches and counts every text of an image, keeps the image through any
of them, and trains on one drawn at random among those that matched. Here:

- `texts_of(record, fields)`: the texts, labelled by where they came from
  ("alt", "title", "alt[2]"); strings only, in field order.
- `Found`: what one text matched (its language, under `--rule metaclip2`).
- `Matches`: a record's texts and what each matched. Iterating it gives the global
  ids counted: every text's, so an entry two texts of one record match counts
  twice (MetaCLIP 2 counts per text). `union()` is the set the keep draw uses:
  P(keep) = 1 - prod(1 - p_e) over the entries any text matched.
- `chosen(matches, seed, key)`: the text to train on, drawn from (seed, key).
- `drawn(matches, texts, seed, key)`: the ids the keep draw uses, by `--texts`:
  "any" (the issue's rule, MetaCLIP 2's paper) every text's; "one" (MetaCLIP 2's
  released curate.py, which first picks one matched text at random and keeps the
  image by that text's entries alone) only the chosen text's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

from vecap_cli.rand import uniform


class Found:
    """One text's matches: `ids` global (None: no list for its language), the list
    matched starting at global id `offset`; under metaclip2 `lang`, `conf` (the
    identified language) and `listed` (the list's name: `lang`, or "other")."""

    __slots__ = ("conf", "ids", "lang", "listed", "offset")

    def __init__(self, ids: list[int] | None, offset: int = 0, lang=None, conf=None, listed=None):
        self.ids = ids
        self.offset = offset
        self.lang = lang
        self.conf = conf
        self.listed = listed

    @property
    def local(self) -> list[int] | None:
        """The ids within its language's list (what `curate.entries` holds): worked out
        only for the records written."""
        offset = self.offset
        return [e - offset for e in self.ids] if offset and self.ids else self.ids

    def __iter__(self) -> Iterator[int]:  # what a counter adds up (Accumulator.recording)
        return iter(self.ids or ())


class Matches:
    """A record's texts as (label, text, Found)."""

    __slots__ = ("counted", "texts")

    def __init__(self, texts: list[tuple[str, str, Found]]):
        self.texts = texts
        if len(texts) == 1:  # the common case, without a comprehension
            self.counted = texts[0][2].ids or []
        else:
            self.counted = [e for _, _, found in texts if found.ids for e in found.ids]

    def __iter__(self) -> Iterator[int]:
        return iter(self.counted)

    def __len__(self) -> int:
        return len(self.counted)

    def __bool__(self) -> bool:
        return bool(self.counted)

    def union(self) -> list[int]:
        return sorted(set(self.counted)) if len(self.texts) > 1 else self.counted

    def has_metadata(self) -> bool:
        if len(self.texts) == 1:
            return self.texts[0][2].ids is not None
        return any(found.ids is not None for _, _, found in self.texts)


def texts_of(record: dict, fields: Sequence[str]) -> list[tuple[str, str]]:
    """(label, text) for every string in `fields`, a list field giving one per item."""
    texts = []
    for field in fields:
        value = record.get(field)
        if isinstance(value, str):
            texts.append((field, value))
        elif isinstance(value, list):
            texts.extend((f"{field}[{i}]", v) for i, v in enumerate(value) if isinstance(v, str))
    return texts


def plain(match_many: Callable[[list[str]], list[list[int]]]):
    """`match_many` (one list) as one giving a `Found` per text."""

    def find(texts: list[str], langs=None) -> list[Found]:  # one list: no languages
        return [Found(ids) for ids in match_many(texts)]

    return find


def chosen(matches: Matches, seed: int, key) -> int | None:
    """The index (in `matches.texts`) of the text to train on, among those that matched."""
    matched = [i for i, (_, _, found) in enumerate(matches.texts) if found.ids]
    if not matched:
        return None
    if len(matched) == 1:
        return matched[0]
    return matched[int(uniform(seed, key, "text") * len(matched))]


TEXTS = ("any", "one")  # --texts: which texts' entries the keep draw uses


def drawn(matches: Matches, texts: str, seed: int, key) -> list[int]:
    """The global ids the keep draw of a record uses (see the module's docstring)."""
    if texts == "any":
        return matches.union()
    pick = chosen(matches, seed, key)
    return matches.texts[pick][2].ids if pick is not None else []


def describe(matches: Matches, several: bool, seed: int, key, p: float, keep: bool | None) -> dict:
    """The record's `curate` object: one text's fields at the top, or `texts` for
    several; without `keep` when None (online curation's pool draws later)."""
    drawn = {"p": p} if keep is None else {"p": p, "keep": keep}
    if not several:
        _, _, found = matches.texts[0]
        curate = {"entries": found.local or []}
        if found.lang is not None:
            curate["lang"], curate["lang_conf"] = found.lang, found.conf
            curate["list"] = found.listed
        return {**curate, **drawn}
    texts = []
    for label, _, found in matches.texts:
        text = {"field": label, "entries": found.local or []}
        if found.lang is not None:
            text["lang"], text["lang_conf"] = found.lang, found.conf
            text["list"] = found.listed
        texts.append(text)
    pick = chosen(matches, seed, key)
    text = matches.texts[pick][1] if pick is not None else None
    return {"texts": texts, "chosen": pick, "text": text, **drawn}


class TextMatcher:
    """A `Matcher` whose `find_many` gives a `Found` per text (several texts, v1)."""

    def __init__(self, matcher):
        self.find_many = plain(matcher.find_many)
