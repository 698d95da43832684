"""Which records this run reads, and their ordinals."""


class Picker:
    """Numbers this rank's records 0, 1, 2 ... (`idx`); -1 for records it must skip.

    Records are skipped when another rank owns them (every world-th record, when
    ranks share inputs) or when finished shards already account for them
    (`--resume`). `plain` says neither applies, so readers may count inline.
    """

    __slots__ = ("ordinal", "plain", "rank", "skip", "world")

    def __init__(self, rank: int = 0, world: int = 1, skip: int = 0):
        self.rank, self.world, self.skip, self.ordinal = rank, world, skip, -1
        self.plain = world == 1 and skip == 0

    def __call__(self) -> int:
        self.ordinal += 1
        if self.world > 1:
            if self.ordinal % self.world != self.rank:
                return -1
            idx = self.ordinal // self.world
        else:
            idx = self.ordinal
        return idx if idx >= self.skip else -1
