"""Metadata: the list of entries curation matches against; an entry's id is its index.

Two file formats: MetaCLIP's (a JSON list of strings, `.json` or `.json.gz`) and
one entry per line (any other name). The builder follows MetaCLIP's
`build_metadata.py`: "0".."99", WordNet synset names, frequent unigrams and
high-PMI bigrams of a corpus, then titles; deduplicated; empty and
single-punctuation entries skipped; capped.

Titles follow MetaCLIP's `wiki_title`: from Wikimedia's hourly pageview dumps
(`pageviews-YYYYMMDD-HH0000.gz`, lines `en Title_Name VIEWS 0`), a line of the
project counts when it holds at least 50 views, titles holding ':' are dropped
(namespaces: `Talk:`, `File:`, `Category:`, ...; MetaCLIP drops every title
with a colon), and a title is kept when its views add up to at least 70.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import re
import string
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import pairwise

import orjson

from vecap_cli.errors import VecapError
from vecap_cli.steps.curate.matching import spacing
from vecap_cli.stream.sinks import write_file
from vecap_cli.stream.sources import read_small_file

WORDNET_FILES = ("data.noun", "data.verb", "data.adj", "data.adv")
_MARKER = re.compile(r"\([a-z]+\)$")  # adjective syntax markers: outback(a), galore(ip)
_SINGLE_PUNCT = frozenset(string.punctuation)


@dataclass(frozen=True)
class Metadata:
    entries: list[str]
    sha256: str  # the identity of the entry list, whatever file format held it
    path: str = ""


def metadata_sha(entries: list[str]) -> str:
    return hashlib.sha256(orjson.dumps(entries)).hexdigest()


def _is_json(path: str) -> bool:
    return path.removesuffix(".gz").endswith(".json")


def read_metadata(path: str) -> Metadata:
    data = read_small_file(path, "metadata ")
    entries = _parse_json(path, data) if _is_json(path) else _parse_lines(path, data)
    return Metadata(entries, metadata_sha(entries), path)


def _parse_json(path: str, data: bytes) -> list[str]:
    try:
        entries = orjson.loads(data)
    except orjson.JSONDecodeError as err:
        raise VecapError(f"metadata '{path}' is not JSON ({err})") from None
    if not isinstance(entries, list):
        raise VecapError(f"metadata '{path}' must be a JSON list of strings")
    for i, entry in enumerate(entries):
        if not isinstance(entry, str):
            raise VecapError(
                f"metadata '{path}': entry {i} is a {type(entry).__name__}, not a string"
            )
    return entries


def _parse_lines(path: str, data: bytes) -> list[str]:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise VecapError(f"metadata '{path}' is not UTF-8 (byte {err.start})") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the final newline ends the last entry
    entries = [line.removesuffix("\r") for line in lines]
    for i, entry in enumerate(entries):
        if not entry:
            raise VecapError(
                f"metadata '{path}': line {i + 1} is empty (one entry per line; ids are line numbers)"
            )
    return entries


def metadata_bytes(path: str, entries: list[str]) -> bytes:
    """The file for `path`: a JSON list for .json (and stdout), else one entry per line."""
    if path == "-" or _is_json(path):
        return orjson.dumps(entries) + b"\n"
    for entry in entries:
        if "\n" in entry or "\r" in entry:
            raise VecapError(
                f"entry {entry!r} holds a line break: write the metadata as .json instead"
            )
    return "".join(f"{entry}\n" for entry in entries).encode()


def write_metadata(path: str, entries: list[str]) -> None:
    """Atomically, in the format `metadata_bytes` picks for `path`; '-' is stdout."""
    write_file(path, metadata_bytes(path, entries))


# -- the builder -------------------------------------------------------------------


@dataclass(frozen=True)
class Recipe:
    """What `vecap curate metadata` builds a list from, in this order."""

    wordnet: str | None = "/usr/share/wordnet"  # a WordNet dict folder; None: left out
    corpus: tuple[str, ...] = ()  # text files (one document a line; .gz; '-' stdin)
    min_count: int = 100  # corpus unigrams counted at least this often
    min_pmi: float = 30.0  # corpus bigrams with at least this PMI (log2)
    min_bigram_count: int = 1
    titles: tuple[str, ...] = ()  # pageview dumps, {title: views} JSON, or one title a line
    title_rule: TitleRule = field(default_factory=lambda: TitleRule())
    max_entries: int = 500_000


@dataclass(frozen=True)
class TitleRule:
    """Which titles MetaCLIP keeps (its `build_metadata.py:wiki_title` defaults)."""

    min_views: int = 70  # views summed over the dumps ("view_thres")
    min_line_views: int = 50  # a dump line (a title's views in one hour) counts from this many
    project: str = "en"  # the dumps' domain code read: "en" is English Wikipedia, desktop
    colons: bool = False  # keep titles holding ':' (MetaCLIP drops them)


def gather(recipe: Recipe) -> tuple[list[str], dict]:
    """The entries of `recipe` (see `build`) and how many each source added."""
    sources: list[tuple[str, Iterable[str]]] = []
    if recipe.wordnet is not None:
        sources.append(("wordnet", list(wordnet_names(recipe.wordnet))))
    if recipe.corpus:
        unigrams, bigrams = corpus_ngrams(
            read_lines(recipe.corpus), recipe.min_count, recipe.min_pmi, recipe.min_bigram_count
        )
        sources += [("unigrams", unigrams), ("bigrams", bigrams)]
    if recipe.titles:
        sources.append(("titles", wiki_titles(recipe.titles, recipe.title_rule)))
    return build(sources, recipe.max_entries)


def read_lines(paths: Iterable[str]) -> Iterator[str]:
    """The lines of text files in turn (.gz read too; '-' is stdin); undecodable
    bytes replaced."""
    for path in paths:
        try:
            if path == "-":
                f = sys.stdin
            elif path.endswith(".gz"):
                f = gzip.open(path, "rt", encoding="utf-8", errors="replace")
            else:
                f = open(path, encoding="utf-8", errors="replace")
        except OSError as err:
            raise VecapError(f"cannot read '{path}': {err.strerror}") from None
        try:
            yield from f
        except (OSError, EOFError) as err:
            raise VecapError(f"cannot read '{path}': {err}") from None
        finally:
            if f is not sys.stdin:
                f.close()


def wordnet_names(directory: str) -> Iterator[str]:
    """Synset names as MetaCLIP takes them from NLTK: the synset's first lemma,
    lowercased, cut at its first '.', '_' -> ' '; every part of speech."""
    for name in WORDNET_FILES:
        path = os.path.join(directory, name)
        try:
            f = open(path, encoding="utf-8")
        except OSError as err:
            raise VecapError(
                f"cannot read WordNet '{path}': {err.strerror} "
                "(install Debian's wordnet-base, or pass --wordnet DIR)"
            ) from None
        with f:
            for line in f:
                if line.startswith("  "):
                    continue  # the license header
                fields = line.split(" ", 5)
                if len(fields) < 6:
                    continue
                lemma = _MARKER.sub("", fields[4]).lower()
                yield lemma.split(".", 1)[0].replace("_", " ")


def _words(line: str) -> Iterator[list[str]]:
    """Runs of word tokens, as the matcher sees them: split on spaces after v1 spacing;
    tokens of punctuation only separate runs (a bigram never spans them)."""
    run: list[str] = []
    for token in spacing(line).split(" "):
        if not token:
            continue
        if not token.strip(string.punctuation):
            if run:
                yield run
            run = []
            continue
        run.append(token)
    if run:
        yield run


def corpus_ngrams(
    lines: Iterable[str], min_count: int, min_pmi: float, min_bigram_count: int = 1
) -> tuple[list[str], list[str]]:
    """(unigrams with count >= min_count, most frequent first; bigrams with PMI >=
    min_pmi, highest first). PMI as NLTK's BigramAssocMeasures.pmi, which MetaCLIP
    used: log2(n(w1 w2) * N / (n(w1) * n(w2))), N the number of word tokens."""
    unigrams: Counter[str] = Counter()
    bigrams: Counter[tuple[str, str]] = Counter()
    for line in lines:
        for run in _words(line):
            unigrams.update(run)
            bigrams.update(pairwise(run))
    total = sum(unigrams.values())
    frequent = sorted(
        (w for w, c in unigrams.items() if c >= min_count), key=lambda w: (-unigrams[w], w)
    )
    scored = []
    for (w1, w2), c in bigrams.items():
        if c < min_bigram_count:
            continue
        pmi = math.log2(c * total) - math.log2(unigrams[w1] * unigrams[w2])
        if pmi >= min_pmi:
            scored.append((-pmi, w1, w2))
    scored.sort()
    return frequent, [f"{w1} {w2}" for _, w1, w2 in scored]


def titles(lines: Iterable[str]) -> Iterator[str]:
    """Wikipedia-style titles, one per line: '_' -> ' ', stripped."""
    for line in lines:
        title = line.strip().replace("_", " ").strip()
        if title:
            yield title


def wiki_titles(paths: Iterable[str], rule: TitleRule) -> list[str]:
    """The titles of `paths` that `rule` keeps: those with views (pageview dumps,
    `{title: views}` JSON as MetaCLIP's title_counts.json) by views summed over
    all files, most viewed first, then those of plain lists (one a line), in order."""
    views: Counter[str] = Counter()
    listed: list[str] = []
    for path in paths:
        name = os.path.basename(path)
        if name.startswith("pageviews-"):
            views.update(pageviews(read_lines([path]), rule))
        elif _is_json(path):
            views.update(_title_views(path))
        else:
            listed.extend(titles(read_lines([path])))
    viewed = [title for title, n in views.most_common() if n >= rule.min_views]
    return [title for title in viewed + listed if rule.colons or ":" not in title]


def pageviews(lines: Iterable[str], rule: TitleRule) -> Counter[str]:
    """Views per title over Wikimedia pageview lines (`project title views bytes`):
    the project's lines of at least `rule.min_line_views` views; '_' -> ' '.
    Lines of another shape are skipped, as MetaCLIP skips them."""
    prefix = rule.project + " "
    counts: Counter[str] = Counter()
    for line in lines:
        if not line.startswith(prefix):
            continue
        fields = line.strip().split(" ")
        if len(fields) != 4:
            continue
        try:
            n = int(fields[2])
        except ValueError:
            continue
        title = fields[1].strip().replace("_", " ")
        if n >= rule.min_line_views and title:
            counts[title] += n
    return counts


def _title_views(path: str) -> Counter[str]:
    try:
        doc = orjson.loads(read_small_file(path, "titles "))
    except orjson.JSONDecodeError as err:
        raise VecapError(f"titles '{path}' is not JSON ({err})") from None
    if not isinstance(doc, dict) or not all(
        isinstance(n, int) and not isinstance(n, bool) for n in doc.values()
    ):
        raise VecapError(f"titles '{path}' must be a JSON object: title -> views")
    views: Counter[str] = Counter()
    for title, n in doc.items():
        title = title.strip().replace("_", " ")
        if title:
            views[title] += n
    return views


def build(sources: Iterable[tuple[str, Iterable[str]]], max_entries: int) -> tuple[list[str], dict]:
    """The entry list: "0".."99" first, then each source in order, until max_entries.

    Returns the entries and, per source, how many entries it added.
    """
    entries: dict[str, None] = dict.fromkeys(str(i) for i in range(100))
    added = {"numbers": len(entries)}
    for name, source in sources:
        before = len(entries)
        for entry in source:
            if len(entries) >= max_entries:
                break
            if entry and entry not in _SINGLE_PUNCT:
                entries.setdefault(entry, None)
        added[name] = len(entries) - before
    return list(entries)[:max_entries], added
