"""The stream stages of curation.

    prepare(samples)  -> (sample, ids)         filters (drops), then matching
    count(pairs)                               consumes: records and matched
    hold(pairs)       -> [(sample, ids)]       consumes into memory, for the one-pass
    balance(pairs)    -> samples + `curate`    keeps by the draws (or marks, keep_all)

The one-pass matches once. Reading once, it `hold`s the matched records until
all are counted, then balances them. Reading twice, `prepare` records what it
decided for each input in a `MatchCache` while counting, and
`MatchCache.replaying` stands in for `prepare` while balancing the same inputs.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from vecap_cli.errors import VecapError
from vecap_cli.steps.curate.balancing import Balancer
from vecap_cli.steps.curate.filters import Dedup, Screen
from vecap_cli.stream.sample import Sample
from vecap_cli.stream.tally import Tally

Pairs = Iterator[tuple[Sample, list[int]]]
NO_TEXT = "no-text"  # a rejection: the record lacks the text field
RULES = ("", NO_TEXT, "text-filter", "duplicate-url", "duplicate-text")  # cache codes


@dataclass(frozen=True)
class CurateConfig:
    field: str = "alt"  # the record field matched against the metadata
    html: bool = False  # strip tags and unescape entities before matching
    text_filter: bool = False  # DataComp's basic caption filter
    dedup: tuple[str, ...] = ()  # "url", "text"
    t: int = 20_000
    seed: int = 0
    keep_all: bool = False  # mark records with keep: false instead of dropping them
    keep_matched: bool = False  # every matched record with its p, no draw: online curation's pool

    def __post_init__(self):
        if self.t <= 0:
            raise ValueError("--t must be positive")
        if self.keep_all and self.keep_matched:
            raise ValueError("--keep-all and --keep-matched: choose one")
        Dedup(self.dedup)  # validates the kinds

    def matching(self) -> dict:
        """The settings that decide what is counted: a counts file records them."""
        return {
            "field": self.field,
            "html": self.html,
            "text_filter": self.text_filter,
            "dedup": sorted(self.dedup),
        }


BATCH = 1024  # records matched in one automaton pass (`Matcher.find_many`)


def prepare(
    samples: Iterable[Sample],
    tally: Tally,
    config: CurateConfig,
    match_many: Callable[[list[str]], list[list[int]]],
    cache: MatchCache | None = None,
) -> Pairs:
    """(sample, sorted matched ids) for every record the filters let through,
    matched BATCH records at a time (`match_many`: `Matcher.find_many`).

    Removals are counted as records arrive, so rejections reach --rejects in input
    order. With a cache, every decision (ids, or the rule that removed the record)
    is recorded by input ordinal for `MatchCache.replaying`.
    """
    field = config.field
    screen = Screen(config) if config.html or config.text_filter or config.dedup else None
    chunk: list[Sample] = []
    rules: list[str] = []  # per sample in the chunk: "" or the rule that removed it
    texts: list[str] = []  # of the samples not removed
    tracking = tally.tracking  # html_cleaned per record, to seal with the shards; else in bulk
    if screen is not None and config.html:
        tally.declare("html_cleaned")
    try:
        for sample in samples:
            text = sample.record.get(field)
            if not isinstance(text, str):
                rule = NO_TEXT
                tally.reject(NO_TEXT, f"record has no string '{field}'", sample)
            elif screen is not None:
                cleaned = screen.cleaned
                text, rule = screen(sample.record, text)
                if tracking and screen.cleaned != cleaned:
                    tally.count("html_cleaned", sample)
                if rule:
                    tally.drop(rule, sample)
            else:
                rule = ""
            chunk.append(sample)
            rules.append(rule)
            if not rule:
                texts.append(text)
            if len(chunk) == BATCH:
                yield from _paired(chunk, rules, match_many(texts), cache)
                chunk, rules, texts = [], [], []
        if chunk:
            yield from _paired(chunk, rules, match_many(texts), cache)
    finally:
        if screen is not None and config.html and not tracking:
            tally.count("html_cleaned", None, screen.cleaned)


def _paired(
    chunk: list[Sample], rules: list[str], found: list[list[int]], cache: MatchCache | None
) -> Iterable[tuple[Sample, list[int]]]:
    """The chunk's samples that were not removed, with their ids (in the cache too)."""
    if cache is None:
        if len(found) == len(chunk):  # the hot path: nothing removed
            return zip(chunk, found, strict=True)
        return zip(
            [s for s, rule in zip(chunk, rules, strict=True) if not rule], found, strict=True
        )
    pairs = []
    ids = iter(found)
    for sample, rule in zip(chunk, rules, strict=True):
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
    no_match = 0
    for pair in pairs:
        if pair[1] or keep_all:
            append(pair)
        else:
            no_match += 1
            tally.drop("no-match", pair[0])
    matched = sum(1 for _, ids in held if ids) if keep_all else len(held)
    return held, len(held) + no_match, matched


def balance(
    pairs: Iterable[tuple[Sample, list[int]]],
    tally: Tally,
    config: CurateConfig,
    balancer: Balancer,
) -> Iterator[Sample]:
    """Adds `curate: {entries, p, keep}`; drops `no-match` and `balance` unless keep_all.
    With keep_matched, adds `curate: {entries, p}` to every matched record and draws
    nothing: online curation draws per epoch."""
    if config.keep_matched:
        yield from _pool(pairs, tally, balancer)
        return
    keep_all = config.keep_all
    tally.declare("kept", "expected_kept")
    tracking, count = tally.tracking, tally.count
    kept = 0  # counted in bulk at the end when no shard seals them (the hot path)
    expected = 0.0
    try:
        for sample, ids in pairs:
            if ids:
                p, keep = balancer(sample.record["key"], ids)  # an int key draws as its str
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
                sample.record["curate"] = {"entries": ids, "p": p, "keep": keep}
                yield sample
            else:
                tally.drop("balance", sample)
    finally:
        if not tracking:
            count("kept", None, kept)
            count("expected_kept", None, expected)


def _pool(
    pairs: Iterable[tuple[Sample, list[int]]], tally: Tally, balancer: Balancer
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
            p = balancer.probability(ids)
            if tracking:
                count("expected_kept", sample, p)
            else:
                expected += p
            sample.record["curate"] = {"entries": ids, "p": p}
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
        base = len(self.ids)
        self.codes.extend(later.codes)
        self.starts.extend(array("q", (start + base for start in later.starts)))
        self.ids.extend(later.ids)

    def matched(self, idx: int, ids: list[int]) -> list[int]:
        """A record that reached matching, with the ids it matched (returned)."""
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
        the same drops, the same ids."""
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
            else:
                tally.drop(RULES[code], sample)
