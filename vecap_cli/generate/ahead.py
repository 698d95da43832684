"""Work that runs ahead of the model: an ordered, bounded, parallel map.

Decoding JPEGs (and reading image files) happens in a thread pool while the
main thread runs the model; PIL and torch release the GIL while they work, so
threads overlap without pickling samples to processes. At most `ahead` items
are in flight, so memory stays bounded however long the stream; results come
back in input order, so the stage stays order-preserving.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def map_ahead(
    fn: Callable[[T], R], items: Iterable[T], workers: int, ahead: int
) -> Iterator[tuple[T, R | BaseException]]:
    """(item, fn(item)) in input order; an exception fn raised is returned, not raised.

    With workers <= 0 everything runs inline (for tests and tiny inputs).
    """
    if workers <= 0:
        for item in items:
            yield item, _call(fn, item)
        return
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="vecap-decode")
    pending: deque[tuple[T, Future]] = deque()
    try:
        for item in items:
            pending.append((item, pool.submit(_call, fn, item)))
            if len(pending) >= ahead:
                first, future = pending.popleft()
                yield first, future.result()
        while pending:
            first, future = pending.popleft()
            yield first, future.result()
    finally:
        # An early exit (an error downstream, --strict): drop queued work, don't wait on it.
        for _, future in pending:
            future.cancel()
        pool.shutdown(wait=True, cancel_futures=True)


def _call(fn, item):
    try:
        return fn(item)
    except Exception as err:  # the caller rejects the one item
        return err
