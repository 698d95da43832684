"""Deterministic randomness: every random decision derives from (seed, key, ...).

Python's `hash()` is salted per process, so it cannot be used: a draw must be the
same on every machine, in every worker, in every shard split.
"""

from hashlib import blake2b

_SCALE = 2.0**-53


def uniform(seed: int, *parts: object) -> float:
    """A float in [0, 1) fixed by `seed` and `parts` (keys, epochs, entry ids)."""
    return unit("\x1f".join(map(str, (seed, *parts))))


def unit(text: str) -> float:
    """The float in [0, 1) that `text` hashes to: `uniform(seed, *parts)` is
    `unit("SEED\x1fPART\x1f...")`, for callers that build many texts on one prefix."""
    digest = blake2b(text.encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "little") >> 11) * _SCALE


def seed32(seed: int, *parts: object) -> int:
    """An integer in [0, 2**32) fixed by `seed` and `parts`: the seed of one sampled
    generation (caption and rewrite --n), small enough for every RNG a server seeds
    (numpy's takes 32 bits)."""
    text = "\x1f".join(map(str, ("seed32", seed, *parts)))
    return int.from_bytes(blake2b(text.encode(), digest_size=4).digest(), "little")
