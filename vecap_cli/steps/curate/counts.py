"""Entry counts: how many records matched each metadata entry (a record counts once
per entry it matches, as in MetaCLIP). A small JSON file that merges by addition.

    {"format": "vecap-curate-counts", "version": 1,
     "metadata": {"sha256": "...", "entries": 500000},
     "matching": {"field": "alt", "html": false, "text_filter": false, "dedup": []},
     "records": 1000000, "matched": 812345,
     "ids": [0, 3, ...], "counts": [12, 40511, ...]}

`ids`/`counts` list the entries counted at least once, ids ascending. The metadata
hash ties the file to one entry list: balancing with another list is refused.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from itertools import chain

import orjson

from vecap_cli.errors import VecapError
from vecap_cli.stream.sinks import write_file
from vecap_cli.stream.sources import read_small_file

FORMAT = "vecap-curate-counts"
VERSION = 1


@dataclass
class EntryCounts:
    metadata_sha: str
    n_entries: int
    matching: dict = field(default_factory=dict)  # the settings that produced the counts
    records: int = 0  # records that reached matching (after the filters)
    matched: int = 0  # of those, records that matched at least one entry
    counts: list[int] = field(default_factory=list)  # dense, one per entry

    def __post_init__(self):
        if not self.counts:
            self.counts = [0] * self.n_entries

    def add(self, other: EntryCounts, name: str = "") -> None:
        if other.metadata_sha != self.metadata_sha or other.n_entries != self.n_entries:
            raise VecapError(f"'{name}' counts a different metadata list: it cannot be merged")
        if other.matching != self.matching:
            raise VecapError(
                f"'{name}' was counted with other matching settings ({_describe(other.matching)} "
                f"vs {_describe(self.matching)}): it cannot be merged"
            )
        self.records += other.records
        self.matched += other.matched
        self.counts = [a + b for a, b in zip(self.counts, other.counts, strict=True)]

    def to_json(self) -> bytes:
        ids = [i for i, c in enumerate(self.counts) if c]
        return orjson.dumps(
            {
                "format": FORMAT,
                "version": VERSION,
                "metadata": {"sha256": self.metadata_sha, "entries": self.n_entries},
                "matching": self.matching,
                "records": self.records,
                "matched": self.matched,
                "ids": ids,
                "counts": [self.counts[i] for i in ids],
            }
        )


def _describe(matching: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(matching.items())) or "none"


class Accumulator:
    """Adds up matched ids record by record; numpy folds them in blocks."""

    _BLOCK = 1 << 22  # ids buffered before a fold: 16 MiB

    def __init__(self, n_entries: int):
        import numpy as np

        self._np = np
        self._n = n_entries
        self._totals = np.zeros(n_entries, dtype=np.int64)
        self._ids = array("i")

    def recording(
        self, match_many: Callable[[list[str]], list[list[int]]]
    ) -> Callable[[list[str]], list[list[int]]]:
        """`match_many` that also adds up what it finds."""

        def record(texts: list[str]) -> list[list[int]]:
            found = match_many(texts)
            self._ids.extend(chain.from_iterable(found))
            self._fold_full()
            return found

        return record

    def add_all(self, ids: array) -> None:
        """Ids gathered elsewhere (the one-pass's held records, a cache, a worker's
        batch), buffered like the recorded ones: a fold for each of many small
        batches would add up a whole array of counts each time."""
        self._ids.extend(ids)
        self._fold_full()

    def _fold_full(self) -> None:
        if len(self._ids) >= self._BLOCK:
            self._fold(self._ids)
            self._ids = array("i")

    def _fold(self, ids: array) -> None:
        np = self._np
        if len(ids):
            self._totals += np.bincount(np.frombuffer(ids, dtype=np.int32), minlength=self._n)

    def result(self, metadata_sha: str, matching: dict, records: int, matched: int) -> EntryCounts:
        self._fold(self._ids)
        self._ids = array("i")
        counts = self._totals.tolist()
        return EntryCounts(metadata_sha, self._n, matching, records, matched, counts)


def read_counts(path: str) -> EntryCounts:
    data = read_small_file(path)
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise VecapError(f"'{path}' is not a counts file (not JSON)") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise VecapError(f"'{path}' is not a counts file written by `vecap curate count`")
    if doc.get("version") != VERSION:
        raise VecapError(
            f"'{path}' is a counts file of version {doc.get('version')}, not {VERSION}"
        )
    try:
        n = int(doc["metadata"]["entries"])
        counts = [0] * n
        for i, c in zip(doc["ids"], doc["counts"], strict=True):
            if i < 0 or c < 0:
                raise ValueError("negative id or count")
            counts[i] = int(c)
        return EntryCounts(
            str(doc["metadata"]["sha256"]),
            n,
            dict(doc.get("matching", {})),
            int(doc["records"]),
            int(doc["matched"]),
            counts,
        )
    except (KeyError, TypeError, ValueError, IndexError):
        raise VecapError(f"'{path}' is a damaged counts file") from None


def merge(paths: Iterable[str]) -> EntryCounts:
    total: EntryCounts | None = None
    for path in paths:
        counts = read_counts(path)
        if total is None:
            total = counts
        else:
            total.add(counts, path)
    if total is None:
        raise VecapError("nothing to merge: name the counts files")
    return total


def write_counts(path: str, counts: EntryCounts) -> None:
    """Atomically (PATH.tmp, then renamed); '-' writes to stdout."""
    write_file(path, counts.to_json() + b"\n")
