"""Entry counts: how many records matched each metadata entry (a record counts once
per entry it matches, as in MetaCLIP). A small JSON file that merges by addition.

    {"format": "vecap-curate-counts", "version": 1,
     "metadata": {"sha256": "...", "entries": 500000},
     "matching": {"field": "alt", "html": false, "text_filter": false, "dedup": []},
     "records": 1000000, "matched": 812345,
     "ids": [0, 3, ...], "counts": [12, 40511, ...]}

`ids`/`counts` list the entries counted at least once, ids ascending. The metadata
hash ties the file to one entry list: balancing with another list is refused.

MetaCLIP's own count files are read too, against the metadata they count
(`read_counts(path, metadata)`): its `entry_count.npy` (numpy.save of one count
per entry, in the metadata's order), a JSON list of counts in that order, and
its released `entry_counts_400m.json` (an object: entry -> count). They hold no
hash: only the number of entries (or the entries' names) ties them to a list.

MetaCLIP 2 counts per language (`metaclip/curation/curate.py`, `count_per_shard`):
an .npz of one array per metadata language code (`np.savez(**entry_counts_ml)`),
each one count per entry of that language's list, written per group of shards and
added up by its `global_count`. Read against a `--rule metaclip2` folder, each
array lands on its language's global ids; languages absent from the file were
never matched (0). One count per global id (a .npy or JSON list over the lists
laid end to end) reads too.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from itertools import chain

import orjson

from vecap_cli.errors import VecapError
from vecap_cli.steps.curate.metadata import Metadata
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

        def record(texts: list[str], *langs) -> list[list[int]]:  # langs: --lang-key's
            found = match_many(texts, *langs)
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


_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = b"PK\x03\x04"  # an .npz
_FORMATS = (
    "vecap's counts, MetaCLIP's entry_count.npy, a JSON list of counts, "
    "a JSON object entry -> count, or MetaCLIP 2's .npz of counts per language"
)


def read_counts(path: str, metadata: Metadata | None = None) -> EntryCounts:
    """The counts at `path`: vecap's format, or one of MetaCLIP's, which need the
    `metadata` they count (its entries, in order) to be read."""
    data = read_small_file(path)
    if data.startswith(_NPY_MAGIC):
        return _foreign(path, _npy_counts(path, data), metadata)
    if data.startswith(_ZIP_MAGIC):
        return _foreign(path, _npz_counts(path, data, metadata), metadata)
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise VecapError(
            f"'{path}' is not a counts file (not JSON, not .npy): {_FORMATS}"
        ) from None
    if isinstance(doc, list):
        return _foreign(path, doc, metadata)
    if isinstance(doc, dict) and "format" not in doc and doc:
        return _foreign(path, _named_counts(path, doc, metadata), metadata)
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise VecapError(
            f"'{path}' is not a counts file written by `vecap curate count` (it reads {_FORMATS})"
        )
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


def _npy_counts(path: str, data: bytes) -> list:
    import io

    import numpy as np

    try:
        array_ = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise VecapError(f"'{path}' is a damaged .npy file ({err})") from None
    return _count_array(path, array_)


def _count_array(path: str, array_, what: str = "MetaCLIP's entry_count.npy is"):
    if array_.ndim != 1 or array_.dtype.kind not in "iuf":
        raise VecapError(
            f"'{path}' holds a {array_.dtype} array of shape {array_.shape}: "
            f"{what} one number per entry"
        )
    return array_.tolist()


def _npz_counts(path: str, data: bytes, metadata) -> list:
    """MetaCLIP 2's counts per language, laid on the global ids of `metadata` (a
    `worldwide.Languages`)."""
    import io
    import zipfile

    import numpy as np

    spans = getattr(metadata, "spans", None)
    if spans is None:
        raise VecapError(
            f"'{path}' holds counts per language (MetaCLIP 2's .npz): reading it needs "
            "the --metadata folder of the lists it counts (--rule metaclip2)"
        )
    counts: list = [0] * len(metadata.entries)
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
            for lang in arrays.files:
                if lang not in spans:
                    raise VecapError(
                        f"'{path}' counts language '{lang}', for which '{metadata.path}' "
                        "has no list: counts of other metadata"
                    )
                own = _count_array(path, arrays[lang], f"language '{lang}' must be")
                start, n = spans[lang]
                if len(own) != n:
                    raise VecapError(
                        f"'{path}' holds {len(own):,} counts for the {n:,} entries of "
                        f"'{lang}' in '{metadata.path}': counts of another list"
                    )
                counts[start : start + n] = own
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
        raise VecapError(f"'{path}' is a damaged .npz file ({err})") from None
    return counts


def _named_counts(path: str, doc: dict, metadata: Metadata | None) -> list:
    """An object entry -> count as a list in the metadata's order (entries it does
    not name: 0); a name the metadata lacks means counts of another list."""
    if metadata is None:
        raise VecapError(f"'{path}' names its entries: reading it needs --metadata")
    index = {entry: i for i, entry in enumerate(metadata.entries)}
    if getattr(metadata, "spans", None) is not None and len(index) < len(metadata.entries):
        raise VecapError(
            f"'{path}' names its entries, and '{metadata.path}' lists some of them in "
            "several languages: which one a name counts is unknown (MetaCLIP 2 counts "
            "per language, in an .npz)"
        )
    unknown = [name for name in doc if name not in index]
    if unknown:
        raise VecapError(
            f"'{path}' counts {len(unknown):,} entries that '{metadata.path}' lacks "
            f"(such as {unknown[0]!r}): counts of another metadata list"
        )
    counts: list = [0] * len(metadata.entries)
    for name, c in doc.items():
        counts[index[name]] = c
    return counts


def _foreign(path: str, values: list, metadata: Metadata | None) -> EntryCounts:
    """MetaCLIP's counts, one per entry in the metadata's order, as EntryCounts of
    that metadata; `records`/`matched` are unknown (0) and so are the matching
    settings ({}: nothing to compare)."""
    for i, c in enumerate(values):
        if not _whole(c):
            raise VecapError(f"'{path}': count {i} is {c!r}, not a whole number of records")
    counts = [int(c) for c in values]
    if metadata is None:
        return EntryCounts("", len(counts), {}, 0, 0, counts)
    if len(counts) != len(metadata.entries):
        raise VecapError(
            f"'{path}' holds {len(counts):,} counts for the {len(metadata.entries):,} entries "
            f"of '{metadata.path}': counts of another metadata list"
        )
    return EntryCounts(metadata.sha256, len(counts), {}, 0, 0, counts)


def _whole(c: object) -> bool:
    """A count: a non-negative whole number (numpy's uint64 counts load as int,
    float counts as float)."""
    if isinstance(c, bool) or not isinstance(c, int | float):
        return False
    return math.isfinite(c) and c >= 0 and c == int(c)


def merge(paths: Iterable[str]) -> EntryCounts:
    total: EntryCounts | None = None
    for path in paths:
        counts = read_counts(path)
        if not counts.metadata_sha:
            raise VecapError(f"'{path}' is MetaCLIP's count file: --merge adds vecap counts files")
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
