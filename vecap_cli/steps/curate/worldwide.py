"""MetaCLIP 2 (worldwide): one entry list per language, a t per language.

Metadata is a folder in MetaCLIP 2's layout (`data/metadata/LANG.json`, a JSON list
per language code, as `metaclip/metadata/align_lid_to_wiki.py` writes it), or any
folder of LANG.json, LANG.json.gz or LANG.txt lists. MetaCLIP 2's LANG.pkl automata
beside them are ignored: a pickle is never loaded from the input.

The languages' lists are laid one after the other, in language order, so an
(language, entry) pair has one global id: counts, counts files, merging and the
keep draws (hash(seed, key, id)) work on global ids as v1 does on its one list.

A text whose identified language has no list, or whose language cannot be
identified (lid gives ""), is matched against the folder's `other` list when it
has one (other.json: MetaCLIP 2's `lid_langcode_to_metadata_langcode` sends
those texts to 'other', with no confidence threshold); without one it matches
nothing and counts as having no metadata. `other` is a list like any other: its
t is derived from English's as every non-English language's is.

The English t gives every other language its t as MetaCLIP 2's `global_count`
does: p = the share of English matches in entries counted below t (`t_to_p`),
then per language the count at which the sorted cumulative share comes nearest
p (`p_to_t`): the same tail proportion in every language.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from itertools import repeat

import orjson

from vecap_cli.errors import VecapError
from vecap_cli.steps.curate.balancing import entry_probabilities
from vecap_cli.steps.curate.matching import Matcher
from vecap_cli.steps.curate.metadata import read_metadata
from vecap_cli.steps.curate.texts import Found

_LANG_FILE = re.compile(r"^([A-Za-z][A-Za-z0-9_-]*)\.(json|json\.gz|txt)$")
ENGLISH = "en"
OTHER = "other"  # the list of the texts whose language has none (MetaCLIP 2's 'other')


@dataclass(frozen=True)
class Languages:
    """The per-language lists laid end to end: global id = offset + local id."""

    entries: list[str]
    sha256: str
    path: str
    spans: dict[str, tuple[int, int]]  # language -> (offset, number of entries)

    def slices(self) -> list[tuple[str, int, int]]:
        return [(lang, off, off + n) for lang, (off, n) in self.spans.items()]


def read_languages(path: str) -> Languages:
    if not os.path.isdir(path):
        raise VecapError(
            f"--rule metaclip2 reads metadata per language: '{path}' must be a folder of "
            "LANG.json lists (MetaCLIP 2's data/metadata)"
        )
    files: dict[str, str] = {}
    for name in sorted(os.listdir(path)):
        match = _LANG_FILE.match(name)
        if match is None:
            continue
        lang = match.group(1)
        if lang in files:
            raise VecapError(f"metadata '{path}' holds two lists for '{lang}'")
        files[lang] = os.path.join(path, name)
    if not files:
        raise VecapError(f"metadata '{path}' holds no LANG.json list")
    entries: list[str] = []
    spans: dict[str, tuple[int, int]] = {}
    identity = []
    for lang, file in files.items():
        meta = read_metadata(file)
        spans[lang] = (len(entries), len(meta.entries))
        entries.extend(meta.entries)
        identity.append((lang, meta.sha256))
    sha = hashlib.sha256(orjson.dumps(identity)).hexdigest()
    return Languages(entries, sha, path, spans)


class WorldMatcher:
    """`find_many(texts)` -> a `Found` per text: its language (`lid`), the list it is
    matched against (its language's, else `other` when the folder has one), and the
    global ids of that list's entries it matches, batched per list; ids None when
    there is no list for it. The automata are built here, once, before any worker
    forks."""

    def __init__(self, languages: Languages, pad: Callable[[str], str], lid):
        self.lid = lid
        self.matchers = {  # each finds global ids: its automaton holds them
            lang: (start, Matcher(languages.entries[start:end], pad, base=start))
            for lang, start, end in languages.slices()
        }
        self.n_entries = len(languages.entries)

    def find_many(self, texts: list[str], langs: list[str | None] | None = None) -> list[Found]:
        """`langs`: per text, a language its record names (`--lang-key`), used as is
        (confidence None), or None to identify the text."""
        lid, matchers = self.lid, self.matchers
        fallback = OTHER if OTHER in matchers else None
        found = []
        groups: dict[str, list[int]] = {}
        for i, (text, given) in enumerate(zip(texts, langs or repeat(None), strict=False)):
            lang, conf = (given, None) if given is not None else lid(text)
            listed = lang if lang in matchers else fallback
            found.append(Found(None, 0, lang, conf, listed))
            if listed is not None:
                groups.setdefault(listed, []).append(i)
        for listed, where in groups.items():
            offset, matcher = matchers[listed]
            for i, ids in zip(where, matcher.find_many([texts[i] for i in where]), strict=True):
                at = found[i]
                at.ids, at.offset = ids, offset
        return found


def t_to_p(counts, t: float) -> float:
    """The share of matches in entries counted below t (MetaCLIP 2's `t_to_p`)."""
    import numpy as np

    counts = np.asarray(counts, dtype=np.int64)
    return float(counts[counts < t].sum() / counts.sum())


def p_to_t(counts, p: float) -> int:
    """The count at which the sorted cumulative share of matches comes nearest p, the
    first such (MetaCLIP 2's `p_to_t`; entries never counted are in the sort)."""
    import numpy as np

    ordered = np.sort(np.asarray(counts, dtype=np.int64))
    share = np.cumsum(ordered) / ordered.sum()
    return int(ordered[np.abs(share - p).argmin()])


def language_ts(
    counts: list[int], languages: Languages, t: int, fixed: Mapping[str, int] = {}
) -> dict[str, int]:
    """t per language with matches: `fixed` where given, English's t for English, else
    derived from English's tail share. Languages without matches need none."""
    ts: dict[str, int] = {}
    p = None
    for lang, start, end in languages.slices():
        own = counts[start:end]
        if not any(own):
            continue
        if lang in fixed:
            ts[lang] = fixed[lang]
        elif lang == ENGLISH:
            ts[lang] = t
        else:
            if p is None:
                p = _english_share(counts, languages, t)
            ts[lang] = p_to_t(own, p)
    return ts


def _english_share(counts: list[int], languages: Languages, t: int) -> float:
    span = languages.spans.get(ENGLISH)
    english = counts[span[0] : span[0] + span[1]] if span else []
    if not any(english):
        raise VecapError(
            "cannot derive a t per language from English's: no English text matched "
            "(name each language's t with --t-per-lang)"
        )
    return t_to_p(english, t)


def probabilities(counts: list[int], languages: Languages, ts: Mapping[str, int]) -> list[float]:
    """p_e for every global id, by its language's t (languages without matches: 1)."""
    probs: list[float] = []
    for lang, start, end in languages.slices():
        own = counts[start:end]
        probs.extend(entry_probabilities(own, ts[lang]) if lang in ts else [1.0] * len(own))
    return probs


def read_t_per_lang(path: str) -> dict[str, int]:
    """A JSON object {language: t}."""
    from vecap_cli.stream.sources import read_small_file

    try:
        doc = orjson.loads(read_small_file(path))
    except orjson.JSONDecodeError as err:
        raise VecapError(f"--t-per-lang '{path}' is not JSON ({err})") from None
    if not isinstance(doc, dict) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in doc.values()
    ):
        raise VecapError(f"--t-per-lang '{path}' must be a JSON object of positive integers")
    return doc
