"""`vecap filter dedup`: drop exact, perceptual and semantic image duplicates.

Two passes, not a gathering stage (stream/parallel.py `Gathering`, as curate's
one-pass holds records): a record's fate depends on records anywhere in the pool,
and holding the records themselves (tar images included) does not fit a large
pool. So:

1. the survey (`survey`) reads the whole input and decodes each image once (in
   threads), keeping per record only what the decisions need: its key (in one
   byte buffer), its `filter.clip_score`, a 16-byte pixel hash, a 64-bit pHash
   (8 bytes: 100M images hold 800 MB of them) and, for SemDeDup, its embedding
   (D float32: the one part that grows with the model; 100M at D=512 is 200 GB,
   so semantic dedup of such a pool runs on a share of it, or by rank);
2. the decisions (`decide`): rule after rule, over the records the rules before
   kept: exact (equal pixel hashes), perceptual (hashes.near_pairs: a
   multi-index over the pHashes, not N² comparisons), semantic (semantic.py:
   k-means, then pairs within a cluster). `survivors.greedy` keeps a record
   unless a better one it duplicates was kept: better is a higher
   `filter.clip_score` (a scored record beats an unscored one), then the lower
   key, then the earlier input;
3. the record pass (`run_stream`): reads the input again and writes what was
   kept; a duplicate is dropped under its rule (`duplicate-exact`,
   `duplicate-phash`, `duplicate-semantic`) and, with --rejects, written there as
   a `"dropped": true` line naming the kept record (`duplicate_of`); a record
   whose image could not be used is rejected as the survey found it (no image
   is decoded twice).

Records are named across the passes by their ordinal in the whole input
(`Layout`), so --world-size works: every rank surveys the whole pool (the same
decisions everywhere) and writes its share; the shares together are the one
process's output. --resume skips the finished shards of the record pass. Stdin
is copied to a temporary file, as it is read twice.
"""

from __future__ import annotations

import bisect
import math
import shutil
import sys
import tempfile
import time
from array import array
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import BinaryIO

import numpy as np

from vecap_cli.errors import VecapError
from vecap_cli.steps.filter import hashes, semantic, survivors
from vecap_cli.stream.batches import Inputs
from vecap_cli.stream.images import ImageLimits, ImageRejected, decode
from vecap_cli.stream.picker import Picker
from vecap_cli.stream.progress import progress, showing
from vecap_cli.stream.runner import StreamOptions, read_inputs, run_stream, split_inputs
from vecap_cli.stream.sample import Sample
from vecap_cli.stream.sources import expand
from vecap_cli.stream.tally import Tally

EXACT, PHASH, SEMANTIC = "duplicate-exact", "duplicate-phash", "duplicate-semantic"
COMMAND = "filter dedup"
_LOOKAHEAD = 64  # images decoded ahead of the survey


@dataclass(frozen=True)
class DedupConfig:
    exact: bool = False
    phash_distance: int | None = None  # None: no perceptual rule
    semantic_eps: float | None = None  # None: no semantic rule
    clusters: int | None = None  # k-means clusters; None: sqrt(N)
    seed: int = 0
    threads: int = 4  # image-decoding threads

    def __post_init__(self):
        if not (self.exact or self.phash_distance is not None or self.semantic_eps is not None):
            raise ValueError("choose a rule: --exact, --phash-distance D or --semantic EPS")
        if self.phash_distance is not None and not 0 <= self.phash_distance < hashes.BITS:
            raise ValueError(f"--phash-distance must be 0..63, not {self.phash_distance}")
        if self.semantic_eps is not None and not 0 < self.semantic_eps < 2:
            raise ValueError(f"--semantic must be above 0 and below 2, not {self.semantic_eps}")


@dataclass
class Drop:
    rule: str
    kept: str  # the key of the record kept in its place
    detail: str


@dataclass
class Decisions:
    """What the record pass does with each record, by ordinal in the whole input."""

    drops: dict[int, Drop] = field(default_factory=dict)
    rejects: dict[int, tuple[str, str]] = field(default_factory=dict)
    surveyed: int = 0  # records the survey read (its ordinals: 0..surveyed-1)


# -- the survey -------------------------------------------------------------


class Survey:
    """Per record with a usable image (its position p): key, score, hashes,
    embedding; `gids[p]`: its ordinal in the whole input."""

    def __init__(self):
        self.gids = array("q")
        self.scores = array("d")  # NaN: no filter.clip_score
        self.key_bytes = bytearray()
        self.key_ends = array("q")
        self.exact = bytearray()  # 16 bytes each
        self.phash = array("Q")
        self.embeddings: list[np.ndarray] = []  # (B, D) batches, in order
        self.rejects: dict[int, tuple[str, str]] = {}

    def __len__(self) -> int:
        return len(self.gids)

    def add(self, gid: int, sample: Sample, look: Look) -> None:
        self.gids.append(gid)
        self.scores.append(score_of(sample.record))
        self.key_bytes += sample.key.encode("utf-8", "surrogatepass")
        self.key_ends.append(len(self.key_bytes))
        if look.exact is not None:
            self.exact += look.exact
        if look.phash is not None:
            self.phash.append(look.phash)

    def key(self, p: int) -> str:
        start = self.key_ends[p - 1] if p else 0
        return self.key_bytes[start : self.key_ends[p]].decode("utf-8", "surrogatepass")

    def order_key(self, p: int) -> tuple:
        """Better records sort first: scored, higher score, lower key, earlier."""
        score = self.scores[p]
        return (math.isnan(score), -score if not math.isnan(score) else 0.0, self.key(p), p)


def score_of(record: dict) -> float:
    """`filter.clip_score` as a finite float, else NaN (no score, or not a number)."""
    found = record.get("filter")
    value = found.get("clip_score") if isinstance(found, dict) else None
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return math.nan


@dataclass
class Look:
    exact: bytes | None = None
    phash: int | None = None
    pixels: object = None  # the model's input, for semantic


def look(sample: Sample, config: DedupConfig, limits: ImageLimits, preprocess) -> Look:
    """One decode of the sample's image, what every rule needs from it; raises
    ImageRejected for an image that cannot be used."""
    image = decode(sample.image_bytes(limits), limits)
    return Look(
        hashes.exact_hash(image) if config.exact else None,
        hashes.phash(image) if config.phash_distance is not None else None,
        preprocess(image) if preprocess is not None else None,
    )


def survey(
    opts: StreamOptions,
    config: DedupConfig,
    embedder: semantic.Embedder | None,
    stdin: BinaryIO | None = None,
) -> tuple[Survey, list[int]]:
    """The whole input, surveyed: (survey, the ordinal of each input's first record)."""
    names = expand(opts.inputs)
    tally = Tally(COMMAND, strict=opts.strict)  # the record pass counts; this one checks
    found, starts, total = Survey(), [], 0
    preprocess = embedder.preprocess if embedder is not None else None
    pixels: list = []
    with progress(f"{COMMAND} (survey)", not opts.quiet) as update:
        for name in names:  # each input numbered from its start: see Layout
            pick = Picker()
            samples = read_inputs(Inputs([name], pick, [], lambda line: None, stdin), tally)
            if update is not None:
                samples = showing(samples, tally, update)
            looked = _looked(samples, config, opts.image_limits, preprocess, tally)
            for sample, seen in looked:
                gid = total + sample.idx
                if isinstance(seen, tuple):
                    found.rejects[gid] = seen
                    continue
                found.add(gid, sample, seen)
                if embedder is not None:
                    pixels.append(seen.pixels)
                    if len(pixels) == embedder.batch_size:
                        found.embeddings.append(embedder.images(pixels))
                        pixels = []
            starts.append(total)
            total += pick.ordinal + 1
    if pixels:
        found.embeddings.append(embedder.images(pixels))  # type: ignore[union-attr]
    starts.append(total)
    return found, starts


def _looked(
    samples: Iterable[Sample], config: DedupConfig, limits: ImageLimits, preprocess, tally: Tally
) -> Iterator[tuple[Sample, Look | tuple[str, str]]]:
    """(sample, its Look or (reason, detail)), in input order, decoded in threads."""

    def work(sample: Sample) -> Look | tuple[str, str]:
        try:
            return look(sample, config, limits, preprocess)
        except ImageRejected as err:
            return err.reason, str(err)

    pool = ThreadPoolExecutor(max(1, config.threads), thread_name_prefix="vecap-dedup")
    pending: deque[tuple[Sample, Future]] = deque()
    try:
        for sample in samples:
            pending.append((sample, pool.submit(work, sample)))
            if len(pending) > _LOOKAHEAD:
                yield _checked(*pending.popleft(), tally)
        while pending:
            yield _checked(*pending.popleft(), tally)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _checked(sample: Sample, job: Future, tally: Tally) -> tuple[Sample, Look | tuple]:
    seen = job.result()
    if isinstance(seen, tuple):
        tally.reject(*seen, sample)  # raises under --strict, as the first bad image should
    return sample, seen


# -- the decisions ------------------------------------------------------------


def decide(found: Survey, config: DedupConfig, log=lambda line: None) -> Decisions:
    """Rule after rule over the records the earlier rules kept."""
    decisions = Decisions(rejects=found.rejects)
    alive = np.arange(len(found))
    if config.exact and len(found):
        digests = np.frombuffer(bytes(found.exact), dtype=np.uint64).reshape(-1, 2)
        groups = _equal_rows(digests)
        alive = _apply(found, decisions, alive, survivors.in_groups(groups, _ranker(found)), EXACT)
    if config.phash_distance is not None and len(alive) > 1:
        d = config.phash_distance
        i, j = hashes.near_pairs(np.frombuffer(found.phash, np.uint64)[alive], d)
        log(f"{len(i):,} pHash pairs within {d} bits among {len(alive):,} images")
        by = survivors.greedy(len(alive), i, j, _ranker(found, alive))
        alive = _apply(found, decisions, alive, by, PHASH, phashes=found.phash)
    if config.semantic_eps is not None and len(alive) > 1:
        vectors = np.concatenate(found.embeddings)[alive]  # (N, D)
        i, j = semantic.semantic_pairs(vectors, config.semantic_eps, config.clusters, config.seed)
        log(f"{len(i):,} pairs above cosine {1 - config.semantic_eps:g} among {len(alive):,}")
        by = survivors.greedy(len(alive), i, j, _ranker(found, alive))
        alive = _apply(found, decisions, alive, by, SEMANTIC, vectors=vectors)
    return decisions


def _equal_rows(digests: np.ndarray) -> np.ndarray:
    """(N,) group ids: equal rows of `digests` (N, 2) share one."""
    order = np.lexsort((digests[:, 1], digests[:, 0]))
    ordered = digests[order]
    new = np.r_[True, np.any(ordered[1:] != ordered[:-1], axis=1)]
    groups = np.empty(len(digests), np.int64)
    groups[order] = np.cumsum(new) - 1
    return groups


def _ranker(found: Survey, alive: np.ndarray | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """rank(positions) -> their order by `Survey.order_key` (0: best), computed for
    the records a rule involves only: a Python sort of 100M keys is not cheap."""

    def rank(positions: np.ndarray) -> np.ndarray:
        real = positions if alive is None else alive[positions]
        order = sorted(range(len(real)), key=lambda n: found.order_key(int(real[n])))
        ranks = np.empty(len(real), np.int64)
        ranks[order] = np.arange(len(real))
        return ranks

    return rank


def _apply(
    found: Survey,
    decisions: Decisions,
    alive: np.ndarray,
    by: np.ndarray,
    rule: str,
    phashes: array | None = None,
    vectors: np.ndarray | None = None,
) -> np.ndarray:
    """Record the drops of `by` (per alive position: -1 kept, else the keeper's
    alive position); the records still alive."""
    for n in np.flatnonzero(by >= 0):
        p, q = int(alive[n]), int(alive[by[n]])
        kept = found.key(q)
        if phashes is not None:
            how = f"{(phashes[p] ^ phashes[q]).bit_count()} bits apart"
        elif vectors is not None:
            how = f"cosine {float(vectors[n] @ vectors[by[n]]):.4f}"
        else:
            how = "the same pixels"
        decisions.drops[found.gids[p]] = Drop(rule, kept, f"duplicate of '{kept}' ({how})")
    return alive[by < 0]


# -- the record pass --------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """Turns a record pass's `idx` into the record's ordinal in the whole input,
    whichever share this rank reads: `starts`, the survey's first ordinal of each
    input (and the total, last)."""

    names: Sequence[str]
    starts: Sequence[int]
    rank: int
    world: int

    def ordinal(self) -> Callable[[Sample], int]:
        _, split_rank, split_world = split_inputs(self.names, self.rank, self.world)
        if split_world > 1:  # every rank reads all, keeps every world-th record
            return lambda sample: sample.idx * split_world + split_rank
        if self.world == 1:
            return lambda sample: sample.idx
        positions = range(self.rank, len(self.names), self.world)  # whole inputs in turn
        local, firsts = [0], [self.starts[k] for k in positions]
        for k in positions:
            local.append(local[-1] + self.starts[k + 1] - self.starts[k])

        def ordinal(sample: Sample) -> int:
            at = bisect.bisect_right(local, sample.idx, 0, len(firsts)) - 1
            return firsts[at] + sample.idx - local[at]

        return ordinal


def applying(decisions: Decisions, ordinal: Callable[[Sample], int]):
    """The record pass's stage: drops and rejects as decided, the rest written."""

    def stage(samples: Iterable[Sample], tally: Tally) -> Iterator[Sample]:
        drops, rejects = decisions.drops, decisions.rejects
        for sample in samples:
            gid = ordinal(sample)
            if gid >= decisions.surveyed:
                raise VecapError("the input changed between the survey and the record pass")
            if gid in rejects:
                tally.reject(*rejects[gid], sample)
                continue
            drop = drops.get(gid)
            if drop is not None:
                tally.drop(drop.rule, sample, detail=drop.detail, duplicate_of=drop.kept)
                continue
            yield sample

    return stage


def dedup(
    opts: StreamOptions, config: DedupConfig, embedder: semantic.Embedder | None = None
) -> Tally:
    """Survey the whole input, decide, then write this rank's share."""
    started = time.monotonic()
    with _spooled_stdin(opts.inputs) as stdin:
        found, starts = survey(opts, config, embedder, stdin)
        decisions = decide(found, config, opts.log)
        decisions.surveyed = starts[-1]
        layout = Layout(expand(opts.inputs), starts, opts.rank, opts.world_size)
        if stdin is not None:
            stdin.seek(0)
        stage = applying(decisions, layout.ordinal())
        return run_stream(COMMAND, opts, stage, config, stdin=stdin, started=started)


@contextmanager
def _spooled_stdin(inputs: Sequence[str]) -> Iterator[BinaryIO | None]:
    """A temporary copy of stdin when '-' is an input (it is read twice), else None."""
    if "-" not in inputs:
        yield None
        return
    with tempfile.TemporaryFile(prefix="vecap-dedup-") as copy:
        shutil.copyfileobj(sys.stdin.buffer, copy, 1 << 20)
        copy.seek(0)
        yield copy
