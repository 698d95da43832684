"""Accounting: every input record ends in exactly one place.

    in + added = out + dropped + rejected

`dropped` and `rejected` are counted per rule; `added` counts outputs beyond the
first that one input expands into (mix --policy all). Steps call `drop`,
`reject` and `add`; the readers count `in`, the writers count `out`. A step's
own statistics (mix `chosen`, curate `kept`) go through `count`.

For `--resume`, events are remembered with the input ordinal they belong to, so
a sharded writer can seal exactly the counts, own statistics and rejected lines
of the inputs behind a finished shard (`seal`); a resumed run restores them
(`restore`). A stage reads ahead of the writer, so an event is sealed by its
input's ordinal, never by when it happened.

With --workers, each batch of records is counted in a worker process by a tally
of its own (`apart`), whose counts and events are taken out (`detach`) and added
to the run's tally in input order (`merge`): the same counts, the same rejected
lines, the same seals.
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import io
import os
import time
from collections import Counter
from dataclasses import dataclass
from typing import IO, Any

import orjson

from vecap_cli.errors import StrictError
from vecap_cli.stream.sample import Sample

_KINDS = ("dropped", "rejected", "added")


@dataclass
class Part:
    """What a tally counted, taken out of it (`Tally.detach`) to be merged into
    another (`Tally.merge`): a batch counted in a worker process."""

    n_in: int
    n_out: int
    dropped: Counter
    rejected: Counter
    added: Counter
    extra: dict  # a step's statistics: counts (those named in `counted`), values it set
    counted: set[str]
    pending: list  # when tracking: (idx, kind, rule, n) of drops, rejections, additions
    tracks: dict  # when tracking: a step's counts by input ordinal, as in Tally._tracks
    lines: list[tuple[int, bytes]]  # when tracking: rejected lines not yet sealed
    written: bytes  # when not: the rejected lines, in the order they were rejected


class Tally:
    def __init__(self, command: str, rejects: IO[bytes] | None = None, strict: bool = False):
        self.command = command
        self.n_in = 0
        self.n_out = 0
        self.dropped: Counter[str] = Counter()
        self.rejected: Counter[str] = Counter()
        self.added: Counter[str] = Counter()
        self.extra: dict[str, Any] = {}  # step-specific statistics for --stats
        self._counted: set[str] = set()  # those of `extra` that `count` keeps (sealed)
        self.started = time.monotonic()
        self.rejects = rejects
        self._strict = strict
        # (idx, kind, rule, n) of drops, rejections and additions
        self._pending: list[tuple[int, str, Any, float]] | None = None
        # a step's own statistics, one record or more each (hot): per (name, key),
        # the idx and amount of each count, in idx order, so a seal takes a prefix
        self._tracks: dict[tuple[str, str | None], tuple[list[int], list[float]]] = {}
        self._pending_lines: list[tuple[int, bytes]] = []  # rejects not yet sealed (or held)
        self._holding = False  # see `hold`
        self._sealed: dict = {kind: {} for kind in _KINDS}

    def apart(self) -> Tally:
        """A new tally that counts as this one does (strict, tracking, rejects), for
        records counted apart (a worker's batch): its rejected lines are kept in
        memory, for `detach`."""
        tally = Tally(
            self.command, io.BytesIO() if self.rejects is not None else None, self._strict
        )
        if self.tracking:
            tally.track()
        return tally

    # -- events -------------------------------------------------------------
    def drop(
        self, rule: str, sample: Sample, n: int = 1, detail: str | None = None, **fields: Any
    ) -> None:
        """Count a drop under `rule`; with `detail`, also write it to --rejects as a
        line with `"dropped": true` (and `fields`), for drops a user will want to
        check (a duplicate names the record it duplicates)."""
        self.dropped[rule] += n
        tracked = self._pending is not None
        if tracked:
            self._pending.append((sample.idx, "dropped", rule, n))  # type: ignore[union-attr]
        if detail is not None and self.rejects is not None:
            line = {"reason": rule, "detail": detail, "origin": sample.origin, "idx": sample.idx}
            line.update(dropped=True, **fields, record=sample.record)
            self._write(line, sample.idx, tracked)

    def add(self, rule: str, sample: Sample, n: int = 1) -> None:
        self.added[rule] += n
        if self._pending is not None:
            self._pending.append((sample.idx, "added", rule, n))

    def count(self, name: str, sample: Sample | None, n: float = 1, key: str | None = None) -> None:
        """Add `n` to the step's statistic `name` (to its `key`, for a per-key one),
        on behalf of `sample`: sealed with the shard that holds it. Without a sample
        (a total counted in bulk), the count cannot be sealed: only for a run that
        does not `track`."""
        if self._pending is None or sample is None:
            self._counted.add(name)
            _add(self.extra, name, key, n)
            return
        # Tracked: into `extra` when sealed (the last seal covers every input).
        track = self._tracks.get((name, key))
        if track is None:
            self._counted.add(name)
            track = self._tracks[name, key] = ([], [])
        idxs, amounts = track
        idx = sample.idx
        if idxs and idx < idxs[-1]:  # a stage that counts out of input order (rare)
            at = bisect.bisect_right(idxs, idx)
            idxs.insert(at, idx)
            amounts.insert(at, n)
        else:
            idxs.append(idx)
            amounts.append(n)

    def declare(self, *names: str, keyed: bool = False) -> None:
        """Statistics that appear in --stats even when nothing was counted."""
        for name in names:
            self._counted.add(name)
            self.extra.setdefault(name, Counter() if keyed else 0)

    @property
    def sealed_rejects_bytes(self) -> int | None:
        """The size of --rejects when the last shard was sealed (None: no rejects file
        was open then): where a resumed run cuts it back to."""
        return self._sealed.get("rejects_bytes")

    @property
    def tracking(self) -> bool:
        """Whether events are sealed by input ordinal: a hot loop that is not
        may count in bulk (`count` without a sample) at its end."""
        return self._pending is not None

    def reject(
        self,
        reason: str,
        detail: str = "",
        sample: Sample | None = None,
        *,
        idx: int = -1,
        origin: str = "",
        raw: str | None = None,
    ) -> None:
        """Count a rejection under `reason` and write it, with the record, to --rejects
        (when tracking, at the seal of the shard its input belongs to)."""
        if sample is not None:
            idx, origin = sample.idx, sample.origin
        if self._strict:
            raise StrictError(f"{origin}: {reason}" + (f": {detail}" if detail else ""))
        self.rejected[reason] += 1
        tracked = self._pending is not None and idx >= 0
        if tracked:
            self._pending.append((idx, "rejected", reason, 1))  # type: ignore[union-attr]
        if self.rejects is not None:
            line: dict[str, Any] = {
                "reason": reason,
                "detail": detail,
                "origin": origin,
                "idx": idx,
            }
            if sample is not None:
                line["record"] = sample.record
            if raw is not None:
                line["raw"] = raw
            self._write(line, idx, tracked)

    def _write(self, line: dict, idx: int, tracked: bool) -> None:
        """A --rejects line: now; or when tracking, at the seal of its input's shard;
        or while holding (`hold`), at `release`."""
        data = orjson.dumps(line, option=orjson.OPT_APPEND_NEWLINE)
        if tracked or (self._holding and idx >= 0):
            self._pending_lines.append((idx, data))
        else:
            self.rejects.write(data)  # type: ignore[union-attr]

    def hold(self) -> None:
        """Keep rejected lines back until `release`: for a stage that reads ahead of
        what it decides (caption decodes and asks ahead), so that the lines the reader
        rejects do not overtake the stage's own on earlier records, and --rejects reads
        in input order however the records were batched (--workers)."""
        self._holding = True

    def release(self, boundary: float = float("inf")) -> None:
        """Write the held lines of inputs below `boundary` in input order; by default
        all of them, holding no more. A tracking tally keeps them for their seal."""
        if boundary == float("inf"):
            self._holding = False
        if self._pending is None and self.rejects is not None:
            self._write_lines(boundary)

    def _write_lines(self, boundary: float) -> None:
        """The pending lines of inputs below `boundary`, in input order (a stable sort:
        lines of one input keep theirs)."""
        keep = []
        for idx, data in sorted(self._pending_lines, key=_idx):
            if idx < boundary:
                self.rejects.write(data)  # type: ignore[union-attr]
            else:
                keep.append((idx, data))
        self._pending_lines = keep

    # -- resume -------------------------------------------------------------
    def track(self) -> None:
        """Start remembering events by input ordinal (sharded output does this)."""
        self._pending = []

    def seal(self, boundary: int, n_out: int) -> dict:
        """Counts for inputs with idx < boundary, written as `n_out` outputs; their
        rejected lines are written and synced, and the sealed size of the rejects
        file is part of the result (`rejects_bytes`)."""
        assert self._pending is not None, "seal() needs track()"
        out = {"in": boundary, "out": n_out}
        sealed = {kind: Counter(self._sealed.get(kind, {})) for kind in _KINDS}
        counts = {
            name: Counter(v) if isinstance(v, dict) else v
            for name, v in self._sealed.get("counts", {}).items()
        }
        keep = []
        for event in self._pending:
            idx, kind, rule, n = event
            if idx >= boundary:
                keep.append(event)
            else:
                sealed[kind][rule] += n
        self._pending = keep
        for (name, key), (idxs, amounts) in self._tracks.items():
            n_sealed = bisect.bisect_left(idxs, boundary)
            _add(counts, name, key, sum(amounts[:n_sealed]))
            del idxs[:n_sealed], amounts[:n_sealed]
        for name, value in counts.items():  # what --stats shows: the sealed counts
            self.extra[name] = Counter(value) if isinstance(value, dict) else value
        for kind in _KINDS:
            out[kind] = _by_rule(sealed[kind])
        out["counts"] = {k: dict(v) if isinstance(v, dict) else v for k, v in counts.items()}
        if self.rejects is not None:
            self.flush_rejects(boundary)
            with contextlib.suppress(OSError):  # a pipe: nothing a resumed run could cut
                out["rejects_bytes"] = self.rejects.tell()
        self._sealed = out
        return out

    def flush_rejects(self, boundary: float = float("inf")) -> None:
        """Write the rejected lines of inputs below `boundary` (all by default), in input
        order, and sync."""
        if self.rejects is None:
            return
        self._write_lines(boundary)
        self.rejects.flush()
        try:
            os.fsync(self.rejects.fileno())
        except OSError as err:  # a pipe or a device (/dev/null) cannot be synced
            if err.errno not in (errno.EINVAL, errno.EROFS, errno.ENOTSUP, errno.EBADF):
                raise

    def restore(self, sealed: dict) -> None:
        """Continue from the counts a finished shard sealed (the inputs are skipped)."""
        self._sealed = sealed
        self.n_in, self.n_out = sealed["in"], sealed["out"]
        self.dropped = Counter(sealed["dropped"])
        self.rejected = Counter(sealed["rejected"])
        self.added = Counter(sealed["added"])
        for name, value in sealed.get("counts", {}).items():
            self._counted.add(name)
            self.extra[name] = Counter(value) if isinstance(value, dict) else value

    # -- parts counted elsewhere ------------------------------------------------
    def detach(self) -> Part:
        """Everything counted so far, taken out: this tally starts again from zero."""
        written = b""
        if isinstance(self.rejects, io.BytesIO):
            written = self.rejects.getvalue()
            self.rejects.seek(0)
            self.rejects.truncate()
        part = Part(
            self.n_in,
            self.n_out,
            self.dropped,
            self.rejected,
            self.added,
            self.extra,
            self._counted,
            self._pending or [],
            self._tracks,
            self._pending_lines,
            written,
        )
        self.n_in = self.n_out = 0
        self.dropped, self.rejected, self.added = Counter(), Counter(), Counter()
        self.extra, self._counted = {}, set()
        self._tracks, self._pending_lines = {}, []
        if self._pending is not None:
            self._pending = []
        return part

    def merge(self, part: Part) -> None:
        """Add what another tally counted (`detach`). Parts are merged in input order,
        so that the rejected lines keep the order one process writes them in."""
        self.n_in += part.n_in
        self.n_out += part.n_out
        self.dropped.update(part.dropped)
        self.rejected.update(part.rejected)
        self.added.update(part.added)
        for name, value in part.extra.items():
            if name not in part.counted:
                self.extra[name] = value  # set by the step (curate's summary)
                continue
            self._counted.add(name)
            if isinstance(value, dict):
                self.extra.setdefault(name, Counter()).update(value)
            else:
                self.extra[name] = self.extra.get(name, 0) + value
        if part.pending or part.tracks or part.lines:
            assert self._pending is not None, "a tracked part needs track()"
            self._pending.extend(part.pending)
            for (name, key), track in part.tracks.items():
                self._counted.add(name)
                _extend(self._tracks.setdefault((name, key), ([], [])), track)
            self._pending_lines.extend(part.lines)
        if part.written:
            assert self.rejects is not None, "rejected lines need a rejects file"
            self.rejects.write(part.written)

    # -- reporting ----------------------------------------------------------
    @property
    def balanced(self) -> bool:
        dropped, rejected, added = (
            sum(c.values()) for c in (self.dropped, self.rejected, self.added)
        )
        return self.n_in + added == self.n_out + dropped + rejected

    def as_dict(self) -> dict:
        return {
            "command": self.command,
            "in": self.n_in,
            "out": self.n_out,
            "dropped": _by_rule(self.dropped),
            "rejected": _by_rule(self.rejected),
            "added": _by_rule(self.added),
            "balanced": self.balanced,
            "seconds": round(time.monotonic() - self.started, 3),
            **{k: _rounded(v) if k in self._counted else v for k, v in self.extra.items()},
        }

    def summary(self) -> str:
        """One line: `in 1,000 = out 990 + dropped 10 (no-caption 10) + rejected 0`."""

        def part(name: str, counts: Counter) -> str:
            total = sum(counts.values())
            rules = ", ".join(f"{rule} {n:,}" for rule, n in counts.most_common())
            return f"{name} {total:,}" + (f" ({rules})" if rules else "")

        added = f" + {part('added', self.added)}" if self.added else ""
        line = (
            f"in {self.n_in:,}{added} = out {self.n_out:,} + {part('dropped', self.dropped)}"
            f" + {part('rejected', self.rejected)} · {time.monotonic() - self.started:.1f}s"
        )
        if not self.balanced:
            line += " · UNBALANCED (a vecap bug: please report it)"
        return line


def _add(counts: dict, name: str, key: str | None, n: float) -> None:
    if key is None:
        counts[name] = counts.get(name, 0) + n
    else:
        counter = counts.get(name)
        if counter is None:
            counter = counts[name] = Counter()
        counter[key] += n


def _extend(track: tuple[list[int], list[float]], more: tuple[list[int], list[float]]) -> None:
    """Add the counts `more` (idx-ordered) to `track`, keeping it idx-ordered."""
    idxs, amounts = track
    if not idxs or not more[0] or more[0][0] >= idxs[-1]:  # a later batch: the rule
        idxs.extend(more[0])
        amounts.extend(more[1])
        return
    for idx, n in zip(*more, strict=True):
        at = bisect.bisect_right(idxs, idx)
        idxs.insert(at, idx)
        amounts.insert(at, n)


def _by_rule(counts: Counter) -> dict:
    """Counts by rule name: an order that does not depend on which rule was met first
    (a stage reading ahead of its decisions, batches over --workers)."""
    return dict(sorted(counts.items()))


def _idx(line: tuple[int, bytes]) -> int:
    return line[0]


def _rounded(value: Any) -> Any:
    """A sum of probabilities (curate's expected_kept) to 3 decimals: the order in
    which a resumed run adds them up must not show."""
    if isinstance(value, float):
        return round(value, 3)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    return value
