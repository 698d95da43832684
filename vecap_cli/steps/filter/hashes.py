"""Image hashes for deduplication, and the near pairs among 64-bit hashes.

- `exact_hash`: BLAKE2b-128 of the decoded pixels (RGB bytes and size), so a JPEG
  saved again as PNG, or with other metadata, hashes the same; any pixel change
  does not.
- `phash`: imagehash's perceptual hash (DCT of a 32x32 grey thumbnail, 64 bits),
  as an integer: resizes, re-encodings and small crops stay a few bits apart.
- `near_pairs`: every pair of hashes within Hamming distance d, by multi-index
  hashing (Norouzi et al., "Fast Search in Hamming Space with Multi-Index
  Hashing", CVPR 2012): cut the 64 bits into m chunks; two hashes at most d bits
  apart are at most r = d // m bits apart on some chunk (pigeonhole). Each hash
  asks, per chunk, for the hashes whose chunk is one of its values with up to r
  bits flipped (a lookup in the sorted chunk values), and only those candidates
  are compared. m is chosen by a cost model (`_chunks`): chunks of about log2(N)
  bits hold about one hash each. At d = 4 and 100k hashes that is a few
  candidates per hash against the N - 1 a brute-force loop compares
  (benchmarks/bench_dedup.py: the speed-up, and where it shrinks: a large d
  makes many flips). Hashes that crowd one chunk value (near-blank images) make
  long runs: their pairs are compared in blocks, so memory stays bounded while
  time grows with them.

  Why not a library: faiss' IndexBinaryMultiHash is the same idea, a 30 MB
  dependency for a range search numpy does in a screenful here; a BK-tree walks
  one hash at a time in Python. The hashes stay one uint64 array, 8 bytes each:
  100M images hold 800 MB.
"""

from __future__ import annotations

import hashlib
import math
from itertools import combinations

import numpy as np

BITS = 64
_BLOCK = 1 << 22  # candidate pairs compared at once: ~100 MB of temporaries
_DIRECT_BITS = 24  # chunks this short are looked up in a table of 2^w + 1 starts
_CACHED_BITS = 20  # ... and that table stays in cache up to this


def exact_hash(image) -> bytes:
    """16 bytes naming the decoded pixels of a PIL image (mode-normalized to RGB)."""
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    digest = hashlib.blake2b(digest_size=16)
    digest.update(b"%dx%d:" % rgb.size)
    digest.update(rgb.tobytes())
    return digest.digest()


def phash(image) -> int:
    """imagehash's 64-bit pHash of a PIL image, as an unsigned integer."""
    import imagehash

    bits = imagehash.phash(image).hash.reshape(-1)  # (64,) bool, row-major
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamming distances of uint64 arrays, element-wise."""
    return np.bitwise_count(np.bitwise_xor(a, b))


def _chunks(d: int, n: int) -> list[tuple[int, int, np.uint64]]:
    """(shift, width, mask) of the chunks the 64 bits are cut into, as even as can be.

    m chunks of w = 64/m bits, searched within r = d // m bits each: a hash asks
    F(w, r) neighbour values of each chunk (`_flips`) and meets the N / 2^w hashes
    each holds by chance, so m chunks cost about m·F·(lookup + N/2^w) per hash,
    where a lookup into a run index of more than 2^20 values (8 MB) misses the
    cache (8x, measured at 100k hashes); the cheapest m is taken (m = d + 1,
    r = 0 is plain pigeonhole: exact chunks)."""

    def cost(m: int) -> float:
        w, r = BITS // m, d // m
        lookup = 1 if w <= _CACHED_BITS else 8  # a run index past the cache: a miss a query
        return m * sum(math.comb(w, k) for k in range(r + 1)) * (lookup + n / 2**w)

    count = min(range(1, min(d + 1, BITS) + 1), key=cost)
    widths = [BITS // count + (k < BITS % count) for k in range(count)]
    out, shift = [], 0
    for width in widths:
        out.append((shift, width, np.uint64((1 << width) - 1)))
        shift += width
    return out


def _flips(width: int, r: int) -> np.ndarray:
    """Every mask of at most r set bits among `width`: a chunk's neighbours within r."""
    masks = [
        sum(1 << b for b in bits) for k in range(r + 1) for bits in combinations(range(width), k)
    ]
    return np.array(masks, dtype=np.uint64)


def near_pairs(hashes: np.ndarray, d: int) -> tuple[np.ndarray, np.ndarray]:
    """(i, j), i < j: every pair of positions whose hashes are at most `d` bits apart,
    sorted; `hashes` a uint64 array."""
    hashes = np.ascontiguousarray(hashes, dtype=np.uint64)
    if d < 0 or len(hashes) < 2:
        return _empty()
    chunks = _chunks(d, len(hashes))
    r = d // len(chunks)  # some chunk of a pair within d is within r: pigeonhole
    found_i, found_j = [], []
    for shift, width, mask in chunks:
        values = (hashes >> np.uint64(shift)) & mask
        order = np.argsort(values, kind="stable")
        runs = _runs(values[order], width)
        flips = _flips(width, r)  # (F,)
        per_block = max(1, _BLOCK // len(flips))
        for start in range(0, len(values), per_block):
            queries = (values[start : start + per_block, None] ^ flips).ravel()  # (B * F,)
            for q, j in _joined(queries, runs, order):
                i = start + q // len(flips)
                keep = i < j
                i, j = i[keep], j[keep]
                keep = np.bitwise_count(hashes[i] ^ hashes[j]) <= d
                found_i.append(i[keep])
                found_j.append(j[keep])
    return _sorted_pairs(found_i, found_j, unique=True)  # a pair close in several chunks


def _runs(table: np.ndarray, width: int):
    """queries -> (start, count) of each query's run in the sorted chunk values
    `table`: a direct index over all values for a chunk of up to 24 bits (built
    once a chunk), else binary search."""
    if width > _DIRECT_BITS:

        def search(queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            lo = np.searchsorted(table, queries, "left")
            return lo, np.searchsorted(table, queries, "right") - lo

        return search
    starts = np.zeros((1 << width) + 1, np.int64)
    np.cumsum(np.bincount(table.astype(np.int64), minlength=1 << width), out=starts[1:])

    def look(queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        at = queries.astype(np.int64)
        return starts[at], starts[at + 1] - starts[at]

    return look


def _joined(queries: np.ndarray, runs, order: np.ndarray):
    """(i, j) blocks: every i with every j whose chunk value equals queries[i]
    (`runs`: where it is among the sorted values, `order`: whose they are); at
    most about _BLOCK pairs a block (a crowded value: more)."""
    lo, counts = runs(queries)
    ends = np.cumsum(counts)
    row = 0
    while row < len(queries):
        stop = max(row + 1, int(np.searchsorted(ends, ends[row] - counts[row] + _BLOCK, "right")))
        rows = np.arange(row, min(stop, len(queries)))
        n = counts[rows]
        if n.sum():
            i = np.repeat(rows, n)
            first = np.repeat(lo[rows] - (np.cumsum(n) - n), n)
            yield i, order[first + np.arange(len(i))]
        row = rows[-1] + 1


def brute_pairs(hashes: np.ndarray, d: int, block: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """`near_pairs` by comparing every pair (numpy, `block` rows at a time): the
    oracle the index is checked against, and what it is benchmarked beside."""
    hashes = np.ascontiguousarray(hashes, dtype=np.uint64)
    found_i, found_j = [], []
    for lo in range(0, len(hashes), block):
        rows = hashes[lo : lo + block, None]  # (B, 1)
        near = np.bitwise_count(rows ^ hashes[None, lo:]) <= d  # (B, N - lo): j >= lo
        i, j = np.nonzero(near)
        i += lo
        j += lo
        keep = i < j
        found_i.append(i[keep])
        found_j.append(j[keep])
    return _sorted_pairs(found_i, found_j)


def _sorted_pairs(
    found_i: list, found_j: list, unique: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    if not found_i:
        return _empty()
    i = np.concatenate(found_i).astype(np.int64)
    j = np.concatenate(found_j).astype(np.int64)
    order = np.lexsort((j, i))
    i, j = i[order], j[order]
    if unique and len(i):
        first = np.r_[True, (i[1:] != i[:-1]) | (j[1:] != j[:-1])]
        i, j = i[first], j[first]
    return i, j


def _empty() -> tuple[np.ndarray, np.ndarray]:
    return np.empty(0, np.int64), np.empty(0, np.int64)
