"""Accounting: every input record ends in exactly one place.

    in + added = out + dropped + rejected

`dropped` and `rejected` are counted per rule; `added` counts outputs beyond the
first that one input expands into (mix --policy all). Steps call `drop`,
`reject` and `add`; the readers count `in`, the writers count `out`.

For `--resume`, events are remembered with the input ordinal they belong to, so
a sharded writer can seal exactly the counts of the inputs behind a finished
shard (`seal`); a resumed run restores them (`restore`).
"""

from __future__ import annotations

import time
from collections import Counter
from typing import IO, Any

import orjson

from vecap_cli.errors import StrictError
from vecap_cli.stream.sample import Sample

_KINDS = ("dropped", "rejected", "added")


class Tally:
    def __init__(self, command: str, rejects: IO[bytes] | None = None, strict: bool = False):
        self.command = command
        self.n_in = 0
        self.n_out = 0
        self.dropped: Counter[str] = Counter()
        self.rejected: Counter[str] = Counter()
        self.added: Counter[str] = Counter()
        self.extra: dict[str, Any] = {}  # step-specific statistics for --stats
        self.started = time.monotonic()
        self.rejects = rejects
        self._strict = strict
        self._pending: list[tuple[int, str, str]] | None = None  # (idx, kind, rule)
        self._sealed: dict = {kind: {} for kind in _KINDS}

    # -- events -------------------------------------------------------------
    def drop(self, rule: str, sample: Sample, n: int = 1) -> None:
        self.dropped[rule] += n
        self._remember(sample, "dropped", rule, n)

    def add(self, rule: str, sample: Sample, n: int = 1) -> None:
        self.added[rule] += n
        self._remember(sample, "added", rule, n)

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
        """Count a rejection under `reason` and write it, with the record, to --rejects."""
        if sample is not None:
            idx, origin = sample.idx, sample.origin
        if self._strict:
            raise StrictError(f"{origin}: {reason}" + (f": {detail}" if detail else ""))
        self.rejected[reason] += 1
        if self._pending is not None and idx >= 0:
            self._pending.append((idx, "rejected", reason))
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
            self.rejects.write(orjson.dumps(line, option=orjson.OPT_APPEND_NEWLINE))

    def _remember(self, sample: Sample, kind: str, rule: str, n: int) -> None:
        if self._pending is not None:
            self._pending.extend([(sample.idx, kind, rule)] * n)

    # -- resume -------------------------------------------------------------
    def track(self) -> None:
        """Start remembering events by input ordinal (sharded output does this)."""
        self._pending = []

    def seal(self, boundary: int, n_out: int) -> dict:
        """Counts for inputs with idx < boundary, written as `n_out` outputs."""
        assert self._pending is not None, "seal() needs track()"
        sealed = {kind: Counter() for kind in _KINDS}
        keep = []
        for idx, kind, rule in self._pending:
            if idx < boundary:
                sealed[kind][rule] += 1
            else:
                keep.append((idx, kind, rule))
        self._pending = keep
        out = {"in": boundary, "out": n_out}
        for kind in _KINDS:
            out[kind] = dict(Counter(self._sealed[kind]) + sealed[kind])
        self._sealed = out
        return out

    def restore(self, sealed: dict) -> None:
        """Continue from the counts a finished shard sealed (the inputs are skipped)."""
        self._sealed = sealed
        self.n_in, self.n_out = sealed["in"], sealed["out"]
        self.dropped = Counter(sealed["dropped"])
        self.rejected = Counter(sealed["rejected"])
        self.added = Counter(sealed["added"])

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
            "dropped": dict(self.dropped),
            "rejected": dict(self.rejected),
            "added": dict(self.added),
            "balanced": self.balanced,
            "seconds": round(time.monotonic() - self.started, 3),
            **self.extra,
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
