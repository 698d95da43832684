"""The stream stages of curation.

    prepare(samples)  -> (sample, ids)         filters (drops), then matching
    count(pairs)                               consumes: records and matched
    hold(pairs)       -> [(sample, ids)]       consumes into memory, for the one-pass
    balance(pairs)    -> samples + `curate`    keeps by the draws (or marks, keep_all)

`prepare` matches one text per record (`--field F`, the hot path). Several texts
(`--field alt,title`, a field holding a list) or `--rule metaclip2` make each
record's ids a `texts.Matches`: every text matched, its language identified.

The one-pass matches once. Reading once, it `hold`s the matched records until
all are counted, then balances them. Reading twice, `prepare` records what it
decided for each input in a `MatchCache` while counting, and
`MatchCache.replaying` stands in for `prepare` while balancing the same inputs.
"""

from __future__ import annotations

import re
from array import array
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from vecap_cli.errors import VecapError
from vecap_cli.steps.curate.balancing import Balancer
from vecap_cli.steps.curate.filters import Dedup, Screen, basic_text_filter, strip_html
from vecap_cli.steps.curate.matching import MATCH_RULES
from vecap_cli.steps.curate.texts import TEXTS, Found, Matches, describe, drawn, plain, texts_of
from vecap_cli.stream.sample import Sample
from vecap_cli.stream.tally import Tally

Pairs = Iterator[tuple[Sample, list[int]]]
NO_TEXT = "no-text"  # a rejection: the record lacks the text field
NO_METADATA = "no-metadata-for-lang"  # a drop: no list for any text's language, no `other`
BAD_LANG = "bad-lang"  # a rejection: the --lang-key field holds no language code
# cache codes (new ones go at the end)
RULES = ("", NO_TEXT, "text-filter", "duplicate-url", "duplicate-text", NO_METADATA, BAD_LANG)
# what --lang-key accepts: a code as MetaCLIP 2's lists are named (en, zh, als, zh-Hant, ...)
LANG_CODE = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,15}")


@dataclass(frozen=True)
class CurateConfig:
    field: str = "alt"  # the record field(s) matched against the metadata: "alt", "alt,title"
    html: bool = False  # strip tags and unescape entities before matching
    text_filter: bool = False  # DataComp's basic caption filter
    dedup: tuple[str, ...] = ()  # "url", "text"
    t: int = 20_000
    seed: int = 0
    keep_all: bool = False  # mark records with keep: false instead of dropping them
    keep_matched: bool = False  # every matched record with its p, no draw: online curation's pool
    rule: str = "v1"  # a name in MATCH_RULES
    t_per_lang: tuple[tuple[str, int], ...] = ()  # metaclip2: t for these languages
    texts: str = "any"  # several texts: keep through any text's entries, or the chosen one's
    lang_key: str = ""  # metaclip2: the record field that holds the language, when it does

    def __post_init__(self):
        if self.t <= 0:
            raise ValueError("--t must be positive")
        if self.keep_all and self.keep_matched:
            raise ValueError("--keep-all and --keep-matched: choose one")
        Dedup(self.dedup)  # validates the kinds
        if self.rule not in MATCH_RULES:
            raise ValueError(f"unknown rule {self.rule!r} (choose {', '.join(MATCH_RULES)})")
        if not all(self.fields):
            raise ValueError(f"empty field name in {self.field!r}")
        if self.texts not in TEXTS:
            raise ValueError(f"unknown --texts {self.texts!r} (choose {', '.join(TEXTS)})")
        if self.lang_key and not MATCH_RULES[self.rule].per_language:
            raise ValueError("--lang-key goes with --rule metaclip2")

    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(f.strip() for f in self.field.split(","))

    @property
    def per_text(self) -> bool:
        """Whether records are matched text by text (`prepare_texts`), not one text each."""
        return len(self.fields) > 1 or MATCH_RULES[self.rule].per_language

    def matching(self) -> dict:
        """The settings that decide what is counted: a counts file records them."""
        return {
            "field": self.field,
            "html": self.html,
            "text_filter": self.text_filter,
            "dedup": sorted(self.dedup),
            **({"rule": self.rule} if self.rule != "v1" else {}),  # v1's files stay as they were
            **({"lang_key": self.lang_key} if self.lang_key else {}),
        }


BATCH = 1024  # records matched in one automaton pass (`Matcher.find_many`)


def prepare(
    samples: Iterable[Sample],
    tally: Tally,
    config: CurateConfig,
    match_many: Callable[[list[str]], list],
    cache: MatchCache | None = None,
) -> Pairs:
    """(sample, sorted matched ids) for every record the filters let through,
    matched BATCH records at a time (`match_many`: `Matcher.find_many`).

    Removals are counted as records arrive, so rejections reach --rejects in input
    order. With a cache, every decision (ids, or the rule that removed the record)
    is recorded by input ordinal for `MatchCache.replaying`.

    A record whose field holds a list of strings is matched text by text, at
    once, and paired with its `Matches`. With `config.per_text`, every record is
    (`prepare_texts`; `match_many` then gives a `Found` per text).
    """
    if config.per_text:
        yield from prepare_texts(samples, tally, config, match_many, cache)
        return
    field = config.field
    screen = Screen(config) if config.html or config.text_filter or config.dedup else None
    chunk: list[Sample] = []
    texts: list[str] = []  # of the samples not removed whose field holds one text
    removed: dict[int, str] = {}  # chunk position -> the rule that removed that sample
    several: dict[int, Matches] = {}  # chunk position -> the matches of a list-valued field
    tracking = tally.tracking  # html_cleaned per record, to seal with the shards; else in bulk
    if screen is not None and config.html:
        tally.declare("html_cleaned")
    try:
        for sample in samples:
            text = sample.record.get(field)
            if screen is None and type(text) is str:  # the hot path: one text, nothing to screen
                texts.append(text)
            else:
                text, rule = _prepared(
                    sample, text, tally, config, screen, match_many, several, chunk
                )
                if rule:
                    removed[len(chunk)] = rule
                elif len(chunk) not in several:
                    texts.append(text)
            chunk.append(sample)
            if len(chunk) == BATCH:
                yield from _paired(chunk, removed, match_many(texts), cache, several)
                chunk, texts, removed, several = [], [], {}, {}
        if chunk:
            yield from _paired(chunk, removed, match_many(texts), cache, several)
    finally:
        if screen is not None and config.html and not tracking:
            tally.count("html_cleaned", None, screen.cleaned)


def _prepared(
    sample: Sample, text, tally: Tally, config: CurateConfig, screen, match_many, several, chunk
) -> tuple[str, str]:
    """`prepare` for a sample off its hot path: (its text, screened; the rule that
    removes it, or ""). A list-valued field's matches go into `several`, at the
    sample's chunk position."""
    field = config.field
    if isinstance(text, list):
        labelled = texts_of(sample.record, (field,))
        rule = _removed(labelled, sample, tally, screen, field)
        if not rule:
            found = plain(match_many)([t for _, t in labelled])
            several[len(chunk)] = _matches(labelled, found)
        return "", rule
    if not isinstance(text, str):
        tally.reject(NO_TEXT, f"record has no string '{field}'", sample)
        return "", NO_TEXT
    if screen is None:
        return text, ""
    cleaned = screen.cleaned
    text, rule = screen(sample.record, text)
    if tally.tracking and screen.cleaned != cleaned:
        tally.count("html_cleaned", sample)
    if rule:
        tally.drop(rule, sample)
    return text, rule


def _removed(
    labelled: list[tuple[str, str]], sample: Sample, tally: Tally, screen: Screen | None, field
) -> str:
    """Screens a record's texts in place: the rule that removes the record, or ""."""
    if screen is None and labelled:
        return ""
    if not labelled:
        tally.reject(NO_TEXT, f"record has no string '{field}'", sample)
        return NO_TEXT
    cleaned = screen.cleaned
    rule = _screen_texts(screen, sample.record, labelled)
    if tally.tracking and screen.cleaned != cleaned:
        tally.count("html_cleaned", sample, screen.cleaned - cleaned)
    if rule:
        tally.drop(rule, sample)
    return rule


def _screen_texts(screen: Screen, record: dict, labelled: list[tuple[str, str]]) -> str:
    """Screen's filters over several texts: HTML cleanup of each, the text filter
    setting aside the texts it fails (the record goes when none is left), dedup on
    the record's url and on its texts together."""
    kept = []
    for label, text in labelled:
        if screen.html:
            clean = strip_html(text)
            screen.cleaned += clean != text
            text = clean
        if not screen.text_filter or basic_text_filter(text):
            kept.append((label, text))
    labelled[:] = kept
    if not kept:
        return "text-filter"
    if screen.dedup is not None:
        return screen.dedup.rule(record, "\x1f".join(text for _, text in kept)) or ""
    return ""


def _matches(labelled: list[tuple[str, str]], found: list[Found]) -> Matches:
    return Matches([(label, text, f) for (label, text), f in zip(labelled, found, strict=True)])


def prepare_texts(
    samples: Iterable[Sample],
    tally: Tally,
    config: CurateConfig,
    find_many: Callable[[list[str]], list[Found]],
    cache: MatchCache | None = None,
) -> Pairs:
    """`prepare` for several texts per record, or per-language matching: (sample,
    `Matches`) for every record the filters let through. A record none of whose
    texts has a list to match (its language's, or `other`) is dropped under
    `no-metadata-for-lang`."""
    fields, lang_key = config.fields, config.lang_key
    screen = Screen(config) if config.html or config.text_filter or config.dedup else None
    chunk: list[Sample] = []
    labels: list[list[tuple[str, str]] | str] = []  # per sample: its texts, or the rule removing it
    given_lang = LangReader(lang_key) if lang_key else None
    langs: list[str | None] | None = [] if lang_key else None  # per text matched: its given one
    if screen is not None and config.html:
        tally.declare("html_cleaned")
    one = fields[0] if len(fields) == 1 else None
    try:
        for sample in samples:
            record = sample.record
            if one is not None and type(text := record.get(one)) is str:  # the common case
                labelled = [(one, text)]
            else:
                labelled = texts_of(record, fields)
            if given_lang is None:
                rule = _removed(labelled, sample, tally, screen, config.field)
            else:  # a bad language is rejected before the dedup sees the record
                lang = given_lang(record) if labelled else None
                if lang is False:
                    tally.reject(BAD_LANG, f"'{lang_key}' holds no language code", sample)
                    rule = BAD_LANG
                else:
                    rule = _removed(labelled, sample, tally, screen, config.field)
                    if not rule:
                        langs.extend([lang] * len(labelled))
            chunk.append(sample)
            labels.append(rule or labelled)
            if len(chunk) == BATCH:
                yield from _grouped(chunk, labels, find_many, tally, cache, langs)
                chunk, labels = [], []
                langs = [] if lang_key else None
        if chunk:
            yield from _grouped(chunk, labels, find_many, tally, cache, langs)
    finally:
        if screen is not None and config.html and not tally.tracking:
            tally.count("html_cleaned", None, screen.cleaned)


class LangReader:
    """`read(record)`: the language `record` names in `lang_key` (a dotted path such
    as `curate.lang` reads a nested field): a code; None when it names none (absent
    or null: its texts are identified); False when the field holds something else.
    The codes seen are remembered (a pool has a few hundred), up to a bound."""

    MEMO = 4096

    def __init__(self, lang_key: str):
        self.path = lang_key.split(".")
        self.valid: dict[str, bool] = {}

    def __call__(self, record: dict) -> str | bool | None:
        path = self.path
        value = record.get(path[0])
        for part in path[1:]:
            if value is None:
                break
            value = value.get(part) if isinstance(value, dict) else False
        if value is None:
            return None
        if type(value) is not str:
            return False
        ok = self.valid.get(value)
        if ok is None:
            ok = LANG_CODE.fullmatch(value) is not None
            if len(self.valid) < self.MEMO:
                self.valid[value] = ok
        return value if ok else False


def _grouped(chunk, labels, find_many, tally: Tally, cache: MatchCache | None, langs=None) -> Pairs:
    """Matches the chunk's texts in one call, then gives each record its own;
    `langs`: per text, the language its record names (--lang-key), or None."""
    texts = [text for labelled in labels if not isinstance(labelled, str) for _, text in labelled]
    found = iter(find_many(texts) if langs is None else find_many(texts, langs))
    for sample, labelled in zip(chunk, labels, strict=True):
        if isinstance(labelled, str):  # removed, and counted, as it arrived
            if cache is not None:
                cache.note(sample.idx, labelled)
            continue
        if len(labelled) == 1:
            ((label, text),) = labelled
            matches = Matches([(label, text, next(found))])
        else:
            matches = _matches(labelled, [next(found) for _ in labelled])
        if not matches.has_metadata():
            tally.drop(NO_METADATA, sample)
            if cache is not None:
                cache.note(sample.idx, NO_METADATA)
            continue
        yield sample, cache.matched(sample.idx, matches) if cache is not None else matches


def _paired(
    chunk: list[Sample],
    removed: dict[int, str],
    found: list[list[int]],
    cache: MatchCache | None,
    several: dict[int, Matches] | None = None,
) -> Iterable[tuple[Sample, list[int]]]:
    """The chunk's samples that were not `removed`, with their ids (in the cache too)."""
    if several:
        found = iter(found)
        found = [
            several[i] if i in several else next(found)
            for i in range(len(chunk))
            if i not in removed
        ]
    if cache is None:
        if not removed:  # the hot path
            return zip(chunk, found, strict=True)
        kept = [s for i, s in enumerate(chunk) if i not in removed]
        return zip(kept, found, strict=True)
    pairs = []
    ids = iter(found)
    for i, sample in enumerate(chunk):
        rule = removed.get(i)
        if rule:
            cache.note(sample.idx, rule)
        else:
            pairs.append((sample, cache.matched(sample.idx, next(ids))))
    return pairs


def count(pairs: Iterable[tuple[Sample, list[int]]], tally: Tally) -> tuple[int, int]:
    """Consumes the matched records; returns (records, matched).

    Accounting as in `balance`: a record that matched counts as out, one that
    matched nothing is dropped under `no-match` (counted in bulk: a counting pass
    writes no shards, so no drop needs its input ordinal).
    """
    records = matched = 0
    for _, ids in pairs:
        records += 1
        if ids:
            matched += 1
    tally.n_out += matched
    if records > matched:
        tally.dropped["no-match"] += records - matched
    return records, matched


def hold(
    pairs: Iterable[tuple[Sample, list[int]]], tally: Tally, keep_all: bool = False
) -> tuple[list[tuple[Sample, list[int]]], int, int]:
    """Consumes the matched records into a list, to balance once every one is counted;
    returns it with (records, matched). Records that matched nothing are dropped
    under `no-match` now (with keep_all they are held, to be written marked)."""
    held: list[tuple[Sample, list[int]]] = []
    append = held.append
    no_match = bulk = 0  # bulk: drops counted at the end, when no shard seals them
    tracking = tally.tracking
    try:
        for pair in pairs:
            if pair[1] or keep_all:
                append(pair)
            elif tracking or not no_match:  # the first one gives the rule its place in the counts
                no_match += 1
                tally.drop("no-match", pair[0])
            else:
                no_match += 1
                bulk += 1
    finally:
        if bulk:
            tally.dropped["no-match"] += bulk
    matched = sum(1 for _, ids in held if ids) if keep_all else len(held)
    return held, len(held) + no_match, matched


def balance(
    pairs: Iterable[tuple[Sample, list[int]]],
    tally: Tally,
    config: CurateConfig,
    balancer: Balancer,
) -> Iterator[Sample]:
    """Adds `curate: {entries, p, keep}` (`texts.describe` for `Matches`); drops
    `no-match` and `balance` unless keep_all. With keep_matched, adds `curate:
    {entries, p}` to every matched record and draws nothing: online curation
    draws per epoch."""
    if config.keep_matched:
        yield from _pool(pairs, tally, config, balancer)
        return
    keep_all = config.keep_all
    one_field = config.fields[0] if len(config.fields) == 1 else None
    texts, seed = config.texts, config.seed
    tally.declare("kept", "expected_kept")
    tracking, count = tally.tracking, tally.count
    kept = 0  # counted in bulk at the end when no shard seals them (the hot path)
    expected = 0.0
    try:
        for sample, ids in pairs:
            by = ids if type(ids) is list else drawn(ids, texts, seed, sample.record["key"])
            if by:
                p, keep = balancer(sample.record["key"], by)  # an int key draws as its str
            elif keep_all:
                p, keep = 0.0, False
            else:
                tally.drop("no-match", sample)
                continue
            if tracking:
                count("kept", sample, int(keep))
                count("expected_kept", sample, p)
            else:
                kept += keep
                expected += p
            if keep or keep_all:
                if by is ids:
                    sample.record["curate"] = {"entries": ids, "p": p, "keep": keep}
                else:
                    several = len(ids.texts) != 1 or ids.texts[0][0] != one_field
                    key = sample.record["key"]
                    sample.record["curate"] = describe(ids, several, config.seed, key, p, keep)
                yield sample
            else:
                tally.drop("balance", sample)
    finally:
        if not tracking:
            count("kept", None, kept)
            count("expected_kept", None, expected)


def _pool(
    pairs: Iterable[tuple[Sample, list[int]]],
    tally: Tally,
    config: CurateConfig,
    balancer: Balancer,
) -> Iterator[Sample]:
    """Every matched record with its keep probability; `expected_kept` sums them
    (the expected size of each epoch online curation draws)."""
    tally.declare("expected_kept")
    tracking, count = tally.tracking, tally.count
    expected = 0.0
    try:
        for sample, ids in pairs:
            if not ids:
                tally.drop("no-match", sample)
                continue
            key = sample.record["key"]
            by = ids if type(ids) is list else drawn(ids, config.texts, config.seed, key)
            p = balancer.probability(by)
            if tracking:
                count("expected_kept", sample, p)
            else:
                expected += p
            if by is ids:
                sample.record["curate"] = {"entries": ids, "p": p}
            else:
                several = len(ids.texts) != 1 or ids.texts[0][0] != config.field
                sample.record["curate"] = describe(ids, several, config.seed, key, p, None)
            yield sample
    finally:
        if not tracking:
            count("expected_kept", None, expected)


class MatchCache:
    """What `prepare` decided for each input ordinal (`sample.idx`) from `first` on,
    packed in arrays: 9 bytes per record plus 4 per match. A worker process
    caches its batch (`first`: the batch's first input); the batches, `extend`ed
    in order, make the cache of the whole input."""

    def __init__(self, first: int = 0):
        self.first = first
        # False once a record's ids were `Matches` (several texts): the ids counted
        # are kept, but not which text matched what, so the decisions cannot be replayed
        self.replayable = True
        self.codes = array("b")  # codes[idx - first]: index into RULES; -1: never reached prepare
        self.starts = array("q")  # starts[idx - first]: where idx's ids begin in `ids`
        self.ids = array("i")
        self._code_of = {rule: i for i, rule in enumerate(RULES)}

    def note_gap(self, idx: int) -> None:
        """Inputs the reader rejected before `idx`: they never reach prepare."""
        gap = idx - self.first - len(self.codes)
        self.codes.extend([-1] * gap)
        self.starts.extend([len(self.ids)] * gap)

    def extend(self, later: MatchCache) -> None:
        """Add the decisions cached for the inputs that follow (a worker's batch)."""
        self.note_gap(later.first)
        self.replayable = self.replayable and later.replayable
        base = len(self.ids)
        self.codes.extend(later.codes)
        self.starts.extend(array("q", (start + base for start in later.starts)))
        self.ids.extend(later.ids)

    def matched(self, idx: int, ids: list[int]) -> list[int]:
        """A record that reached matching, with the ids it matched (returned)."""
        if type(ids) is not list:
            self.replayable = False
        if idx != self.first + len(self.codes):
            self.note_gap(idx)
        self.codes.append(0)
        self.starts.append(len(self.ids))
        self.ids.extend(ids)
        return ids

    def note(self, idx: int, rule: str) -> None:
        """A record removed under `rule` (a matched one goes through `matched`)."""
        if idx != self.first + len(self.codes):
            self.note_gap(idx)
        self.codes.append(self._code_of[rule])
        self.starts.append(len(self.ids))

    def replaying(self, samples: Iterable[Sample], tally: Tally, config: CurateConfig) -> Pairs:
        """`prepare`'s output again, from the cache (of the whole input, `first` 0):
        the same drops, the same ids. Only when `replayable`."""
        assert self.replayable
        codes, ids = self.codes, self.ids
        starts = self.starts + array("q", [len(ids)])  # with the end of the last one's ids
        n = len(codes)
        for sample in samples:
            idx = sample.idx
            code = codes[idx] if idx < n else -1
            if code == 0:
                yield sample, ids[starts[idx] : starts[idx + 1]].tolist()
            elif code < 0:
                raise VecapError(f"{sample.origin}: the input changed between curate's two passes")
            elif code == 1:
                tally.reject(NO_TEXT, f"record has no string '{config.field}'", sample)
            elif RULES[code] == BAD_LANG:
                tally.reject(BAD_LANG, f"'{config.lang_key}' holds no language code", sample)
            else:
                tally.drop(RULES[code], sample)
