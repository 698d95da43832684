"""Which record of a set of duplicates survives: the best, by a rank (0: best).

`greedy` keeps a record unless a better record it duplicates was kept; the
dropped one names the best such keeper. Walking the records best first makes
that one pass: a kept record drops its worse neighbours not dropped yet. Over a
chain a ~ b ~ c (a best, a and c not duplicates) b is dropped and c kept: no
record is dropped for resembling a record that is itself gone.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Ranker = Callable[[np.ndarray], np.ndarray]  # positions -> their ranks among themselves


def greedy(n: int, i: np.ndarray, j: np.ndarray, rank: Ranker) -> np.ndarray:
    """(n,): -1 for a record kept, else the position of the record kept in its place,
    given the duplicate pairs (i, j) among positions 0..n-1."""
    by = np.full(n, -1, np.int64)
    if not len(i):
        return by
    involved = np.unique(np.r_[i, j])  # ranks only for these: see dedup._ranker
    ranks = np.full(n, -1, np.int64)
    ranks[involved] = rank(involved)
    better = ranks[i] < ranks[j]
    a, b = np.where(better, i, j), np.where(better, j, i)  # a: the better of each pair
    order = np.lexsort((ranks[b], ranks[a]))  # by keeper, best first; its neighbours best first
    a, b = a[order], b[order]
    firsts = np.flatnonzero(np.r_[True, a[1:] != a[:-1]])
    for lo, hi in zip(firsts, np.r_[firsts[1:], len(a)], strict=True):
        keeper = a[lo]
        if by[keeper] >= 0:  # dropped by a better record: it keeps nothing
            continue
        worse = b[lo:hi]
        worse = worse[by[worse] < 0]
        by[worse] = keeper
    return by


def in_groups(groups: np.ndarray, rank: Ranker) -> np.ndarray:
    """As `greedy` for records that are all duplicates of each other within a group
    (`groups`: (n,) group ids, equal pixels): the best of each group is kept."""
    n = len(groups)
    by = np.full(n, -1, np.int64)
    sizes = np.bincount(groups)
    involved = np.flatnonzero(sizes[groups] > 1)
    if not len(involved):
        return by
    ranks = rank(involved)
    order = involved[np.lexsort((ranks, groups[involved]))]  # by group, best first
    g = groups[order]
    first = np.r_[True, g[1:] != g[:-1]]
    keeper = order[np.flatnonzero(first)[np.cumsum(first) - 1]]
    by[order[~first]] = keeper[~first]
    return by
