"""Image hashes for deduplication, and the near pairs among 64-bit hashes.

- `exact_hash`: BLAKE2b-128 of the decoded pixels (RGB bytes and size), so a JPEG
  saved again as PNG, or with other metadata, hashes the same; any pixel change
  does not.
- `phash`: imagehash's perceptual hash (DCT of a 32x32 grey thumbnail, 64 bits),
  as an integer: resizes, re-encodings and small crops stay a few bits apart.
- `near_pairs`: every pair of hashes within Hamming distance d, by multi-index
  hashing on the pigeonhole principle (Norouzi et al., "Fast Search in Hamming
  Space with Multi-Index Hashing", CVPR 2012): cut the 64 bits into d + 1
  chunks; two hashes at most d bits apart agree exactly on at least one chunk.
  Sorting by each chunk puts candidates in runs of equal values; only those are
  compared, and a pair is kept in the first chunk it agrees on, so it is found
  once. For N uniform hashes a run holds about N / 2^(64/(d+1)) of them: at
  100k hashes and d = 4 (13-bit chunks), ~12, against the N - 1 a brute-force
  loop compares each hash with (benchmarks/bench_dedup.py: the speed-up).
  Hashes that crowd one chunk value (near-blank images) make long runs: those
  are compared in blocks, so memory stays bounded while time grows with them.

  Why not a library: faiss' IndexBinaryMultiHash is the same idea, a 30 MB
  dependency for a range search that numpy does in 60 lines here; a BK-tree
  walks one hash at a time in Python. The hashes stay one uint64 array, 8 bytes
  each: 100M images hold 800 MB.
"""

from __future__ import annotations

import hashlib

import numpy as np

BITS = 64
_BLOCK = 1 << 22  # candidate pairs compared at once: ~100 MB of temporaries


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


def _chunks(d: int) -> list[tuple[int, np.uint64]]:
    """(shift, mask) of d + 1 chunks covering the 64 bits, as even as can be."""
    n = min(d + 1, BITS)
    widths = [BITS // n + (i < BITS % n) for i in range(n)]
    out, shift = [], 0
    for width in widths:
        out.append((shift, np.uint64((1 << width) - 1)))
        shift += width
    return out


def near_pairs(hashes: np.ndarray, d: int) -> tuple[np.ndarray, np.ndarray]:
    """(i, j), i < j: every pair of positions whose hashes are at most `d` bits apart,
    sorted; `hashes` a uint64 array."""
    hashes = np.ascontiguousarray(hashes, dtype=np.uint64)
    if d < 0 or len(hashes) < 2:
        return _empty()
    chunks = _chunks(d)
    found_i, found_j = [], []
    for c, (shift, mask) in enumerate(chunks):
        values = (hashes >> np.uint64(shift)) & mask
        order = np.argsort(values, kind="stable")
        sorted_values = values[order]
        starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
        sizes = np.diff(np.r_[starts, len(hashes)])
        for i, j in _run_pairs(order, starts, sizes):
            xor = hashes[i] ^ hashes[j]
            keep = np.bitwise_count(xor) <= d
            for shift_b, mask_b in chunks[:c]:  # found in an earlier chunk already
                keep &= ((xor >> np.uint64(shift_b)) & mask_b) != 0
            found_i.append(i[keep])
            found_j.append(j[keep])
    return _sorted_pairs(found_i, found_j)


def _run_pairs(order: np.ndarray, starts: np.ndarray, sizes: np.ndarray):
    """(i, j) blocks of every pair within each run of `order` (runs of equal chunks)."""
    for size in np.unique(sizes[sizes > 1]):
        run_starts = starts[sizes == size]
        a, b = np.triu_indices(int(size), 1)  # (P,) pairs within one run
        per_block = max(1, _BLOCK // len(a))
        for at in range(0, len(run_starts), per_block):
            base = run_starts[at : at + per_block, None]  # (B, 1)
            if len(a) <= _BLOCK:
                yield _ordered(order[base + a].ravel(), order[base + b].ravel())
                continue
            for lo in range(0, len(a), _BLOCK):  # one long run: its pairs in blocks
                yield _ordered(order[base + a[lo : lo + _BLOCK]], order[base + b[lo : lo + _BLOCK]])


def _ordered(i: np.ndarray, j: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    i, j = i.ravel(), j.ravel()
    return np.minimum(i, j), np.maximum(i, j)


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


def _sorted_pairs(found_i: list, found_j: list) -> tuple[np.ndarray, np.ndarray]:
    if not found_i:
        return _empty()
    i = np.concatenate(found_i).astype(np.int64)
    j = np.concatenate(found_j).astype(np.int64)
    order = np.lexsort((j, i))
    return i[order], j[order]


def _empty() -> tuple[np.ndarray, np.ndarray]:
    return np.empty(0, np.int64), np.empty(0, np.int64)
