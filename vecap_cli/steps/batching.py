"""Order-preserving batches for model-backed stages (caption, rewrite).

A stage pairs each sample with its payload: model input, or `PASS` for a
sample that goes through as it is. `in_batches` groups them, in order, into
lists holding at most `size` model inputs, so one `generate` call serves a
batch and every sample still leaves in the order it came. Samples to pass
never wait behind an empty batch, and a group is cut at `4 * size + 64`
entries so a long run of them between two inputs does not pile up in memory.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

PASS = object()  # the payload of a sample that needs no model


def in_batches(entries: Iterable[tuple[T, object]], size: int) -> Iterator[list[tuple[T, object]]]:
    group: list[tuple[T, object]] = []
    work = 0
    cap = 4 * size + 64
    for entry in entries:
        if entry[1] is PASS:
            if not work:
                yield [entry]
                continue
        else:
            work += 1
        group.append(entry)
        if work >= size or len(group) >= cap:
            yield group
            group, work = [], 0
    if group:
        yield group
