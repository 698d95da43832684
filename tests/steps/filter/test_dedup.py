"""Deduplication: the hashes, the index of near pHashes, SemDeDup's pairs, which
record survives, and the two passes over a pool."""

import numpy as np
import orjson
import pytest

from tests.steps.filter.images import encoded, flickr, generated, near_copies, write_pool
from vecap_cli.steps.filter import hashes, semantic, survivors
from vecap_cli.steps.filter.dedup import DedupConfig, dedup
from vecap_cli.stream.runner import StreamOptions, per_rank

D = 10  # the pHash distance the photo tests use: copies are 0-8 bits apart, photos 20+


def planted_hashes(n: int, d: int, seed: int = 0) -> np.ndarray:
    """`n` random 64-bit hashes; every tenth a copy of another with up to d bits flipped,
    and a crowd of equal low chunks (near-blank images): long runs in the index."""
    rng = np.random.default_rng(seed)
    h = rng.integers(0, 2**64 - 1, n, dtype=np.uint64, endpoint=True)
    for target in range(0, n, 10):
        source = int(rng.integers(0, n))
        flips = rng.choice(64, size=int(rng.integers(0, d + 1)), replace=False)
        h[target] = h[source] ^ np.uint64(sum(1 << int(b) for b in flips))
    h[-200:] &= np.uint64(0xFFFF_0000_0000_0000)
    return h


@pytest.mark.parametrize("d", [0, 1, 4, 9, 20])
def test_the_index_finds_the_pairs_brute_force_finds(d):
    h = planted_hashes(3000, d)
    i, j = hashes.near_pairs(h, d)
    bi, bj = hashes.brute_pairs(h, d)
    assert len(bi) > 250  # the planted ones at least
    assert np.array_equal(i, bi) and np.array_equal(j, bj)
    assert np.all(i < j) and np.all(hashes.distance(h[i], h[j]) <= d)


def test_the_index_on_tiny_inputs():
    assert [len(x) for x in hashes.near_pairs(np.array([], np.uint64), 3)] == [0, 0]
    assert [len(x) for x in hashes.near_pairs(np.array([5], np.uint64), 3)] == [0, 0]
    i, j = hashes.near_pairs(np.array([0b1011, 0b0011, 1 << 63], np.uint64), 1)
    assert (i.tolist(), j.tolist()) == ([0], [1])


def test_exact_hash_is_of_the_pixels_not_the_file():
    from PIL import Image, PngImagePlugin

    image = generated(1)[0]
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "other metadata")
    files = [encoded(image), encoded(image, pnginfo=info), encoded(image, "WEBP", lossless=True)]
    assert len(set(files)) == 3
    digests = {hashes.exact_hash(Image.open(__import__("io").BytesIO(f))) for f in files}
    assert len(digests) == 1
    assert hashes.exact_hash(image.convert("RGBA")) == hashes.exact_hash(image)  # mode-normalized
    changed = image.copy()
    changed.putpixel((0, 0), (0, 0, 0) if image.getpixel((0, 0)) != (0, 0, 0) else (1, 1, 1))
    assert hashes.exact_hash(changed) != hashes.exact_hash(image)


def _near_copy_distances(images) -> tuple[list[int], list[int]]:
    from PIL import Image

    def ph(data: bytes) -> int:
        return hashes.phash(Image.open(__import__("io").BytesIO(data)).convert("RGB"))

    own = [ph(encoded(image)) for image in images]
    copies = [
        (own[n] ^ ph(data)).bit_count()
        for n, image in enumerate(images)
        for data in near_copies(image).values()
    ]
    apart = [(a ^ b).bit_count() for k, a in enumerate(own) for b in own[k + 1 :]]
    return copies, apart


@pytest.mark.parametrize("source", [generated, flickr])
def test_phash_finds_near_copies_and_not_distinct_photos(source):
    copies, apart = _near_copy_distances(source(24))
    assert max(copies) <= D, copies
    assert min(apart) > D, sorted(apart)[:5]


def test_greedy_keeps_the_best_and_drops_only_for_a_kept_record():
    # a ~ b ~ c, a and c not duplicates: a (best) kept, b dropped for a, c kept
    rank = lambda positions: np.asarray(positions)  # noqa: E731 -- position is rank
    by = survivors.greedy(4, np.array([0, 1]), np.array([1, 2]), rank)
    assert by.tolist() == [-1, 0, -1, -1]
    # reversed ranks: c best; b dropped for c; a kept (its only neighbour is gone)
    by = survivors.greedy(3, np.array([0, 1]), np.array([1, 2]), lambda p: 2 - np.asarray(p))
    assert by.tolist() == [-1, 2, -1]
    # a dropped record names the best kept one among its duplicates: 1 best, then 0, then 2
    by = survivors.greedy(3, np.array([0, 1]), np.array([2, 2]), lambda p: np.array([1, 0, 2])[p])
    assert by.tolist() == [-1, -1, 1]


def test_groups_keep_their_best():
    groups = np.array([0, 1, 0, 2, 0, 1])
    by = survivors.in_groups(groups, lambda positions: -np.asarray(positions))  # later: better
    assert by.tolist() == [4, 5, 4, -1, -1, -1]


def _embeddings(n: int, dim: int, pairs: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim)).astype(np.float32)
    planted = set()
    for target in range(1, 2 * pairs, 2):
        source = target - 1
        x[target] = x[source] + 0.01 * rng.standard_normal(dim)
        planted.add((source, target))
    return x / np.linalg.norm(x, axis=1, keepdims=True), planted


@pytest.mark.parametrize("clusters", [1, 8, None])
def test_semdedup_finds_the_planted_pairs(clusters):
    x, planted = _embeddings(400, 32, pairs=25)
    i, j = semantic.semantic_pairs(x, eps=0.01, n_clusters=clusters, seed=0)
    assert set(zip(i.tolist(), j.tolist(), strict=True)) == planted


def test_semdedup_is_the_same_for_a_seed():
    x, _ = _embeddings(300, 16, pairs=10)
    runs = [semantic.cluster(x, 6, seed) for seed in (3, 3, 4)]
    assert np.array_equal(runs[0], runs[1])


def _run(tmp_path, pool, config: DedupConfig, **flags):
    out = tmp_path / "out.jsonl"
    opts = StreamOptions(inputs=(str(pool),), output=str(out), quiet=True, **flags)
    tally = dedup(opts, config)
    return tally, [orjson.loads(line) for line in out.read_bytes().splitlines()]


def test_a_pool_of_near_copies(tmp_path):
    images = generated(5)
    pool = {f"p{n}": encoded(image) for n, image in enumerate(images)}
    pool["z-same-pixels"] = encoded(images[0], "WEBP", lossless=True)
    pool |= {f"z-{kind}": data for kind, data in near_copies(images[1]).items()}
    path = write_pool(tmp_path, pool)
    rejects = tmp_path / "rejects.jsonl"
    config = DedupConfig(exact=True, phash_distance=D)
    tally, kept = _run(tmp_path, path, config, rejects=str(rejects))
    assert [r["key"] for r in kept] == ["p0", "p1", "p2", "p3", "p4"]
    assert dict(tally.dropped) == {"duplicate-exact": 1, "duplicate-phash": 3}
    assert tally.balanced and tally.n_in == 9
    lines = [orjson.loads(line) for line in rejects.read_bytes().splitlines()]
    assert {(x["record"]["key"], x["reason"], x["duplicate_of"]) for x in lines} == {
        ("z-same-pixels", "duplicate-exact", "p0"),
        ("z-jpeg", "duplicate-phash", "p1"),
        ("z-resized", "duplicate-phash", "p1"),
        ("z-cropped", "duplicate-phash", "p1"),
    }
    assert all(x["dropped"] is True for x in lines)


def test_the_higher_score_survives_else_the_lower_key(tmp_path):
    image = encoded(generated(1)[0])
    (tmp_path / "a.png").write_bytes(image)
    records = [
        {"key": "a", "image": "a.png"},
        {"key": "b", "image": "a.png", "filter": {"clip_score": 0.2}},
        {"key": "c", "image": "a.png", "filter": {"clip_score": 0.3}},
        {"key": "d", "image": "a.png", "filter": {"clip_score": "high"}},  # no score
    ]
    path = tmp_path / "pool.jsonl"
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    _, kept = _run(tmp_path, path, DedupConfig(exact=True))
    assert [r["key"] for r in kept] == ["c"]
    unscored = [
        {"key": "m", "image": "a.png", "filter": {"clip_score": "high"}},  # not a score
        {"key": "n", "image": "a.png"},
        {"key": "k", "image": "a.png", "filter": {"clip_score": float("nan")}},
    ]
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in unscored))
    _, kept = _run(tmp_path, path, DedupConfig(exact=True))
    assert [r["key"] for r in kept] == ["k"]


def _shuffled_pool(tmp_path, n_files: int):
    """A pool of distinct photos and near copies over `n_files` JSONL inputs, with a bad
    line and a missing image, in an order where keepers and copies are far apart."""
    images = generated(6, seed=1)
    pool = {f"p{n}": encoded(image) for n, image in enumerate(images)}
    pool |= {f"z{n}-{kind}": d for n in (0, 3) for kind, d in near_copies(images[n]).items()}
    write_pool(tmp_path, pool)
    lines = (tmp_path / "pool.jsonl").read_bytes().splitlines()
    lines = lines[::2] + lines[1::2] + [b"{bad", b'{"key": "gone", "image": "gone.png"}']
    paths = []
    for f in range(n_files):
        path = tmp_path / f"part{f}.jsonl"
        path.write_bytes(b"\n".join(lines[f::n_files]) + b"\n")
        paths.append(str(path))
    return paths


@pytest.mark.parametrize("n_files", [1, 3])  # ranks share records / take whole inputs
def test_ranks_together_write_what_one_process_writes(tmp_path, n_files):
    inputs = tuple(_shuffled_pool(tmp_path, n_files))
    config = DedupConfig(exact=True, phash_distance=D)

    def run(rank, world):
        out, rejects = tmp_path / f"out{rank}{world}.jsonl", tmp_path / f"rej{rank}{world}.jsonl"
        opts = StreamOptions(
            inputs=inputs,
            output=str(out),
            rejects=str(rejects),
            rank=rank,
            world_size=world,
            quiet=True,
        )
        tally = dedup(opts, config)
        rejects = per_rank(str(rejects), rank, world)
        lines = [orjson.loads(x) for x in open(rejects, "rb").read().splitlines()]
        kept = [orjson.loads(x)["key"] for x in out.read_bytes().splitlines()]
        return tally, kept, [(x["reason"], x.get("record", {}).get("key")) for x in lines]

    one, kept, rejected = run(0, 1)
    assert sorted(kept) == ["p0", "p1", "p2", "p3", "p4", "p5"]
    assert one.dropped == {"duplicate-phash": 6} and one.rejected.total() == 2
    shares = [run(rank, 2) for rank in (0, 1)]
    assert all(tally.n_in for tally, _, _ in shares)  # both ranks wrote a share
    assert sorted(k for _, share, _ in shares for k in share) == sorted(kept)
    assert sorted(r for _, _, lines in shares for r in lines) == sorted(rejected)
    assert sum(t.n_in for t, _, _ in shares) == one.n_in
