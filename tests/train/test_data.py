"""Training batches: the caption draw of `vecap mix`, counted losses, resumable order."""

import io

import pytest
import torch

from tests.train.conftest import shapes_records, write_jsonl
from vecap_cli.steps.mix import MixConfig, mix
from vecap_cli.stream.runner import iter_samples
from vecap_cli.stream.tally import Tally
from vecap_cli.train.data import DataPlan, TrainData, buffer_shuffle, loader, replay

open_clip = pytest.importorskip("open_clip")
TRANSFORM = open_clip.image_transform(32, is_train=True)  # random crops: augmentation included
TOKENIZER = open_clip.SimpleTokenizer(context_length=32)


def batches(path, steps, *, epoch=0, first=0, positions=None, workers=0, **plan):
    plan = DataPlan(
        inputs=(str(path),),
        batch_size=plan.pop("batch_size", 8),
        workers=max(1, workers),
        shuffle_buffer=plan.pop("shuffle_buffer", 32),
        **plan,
    )
    data = TrainData(plan, TRANSFORM, TOKENIZER)
    data.start_epoch(epoch, steps, first, positions or [(0, 0)] * plan.workers)
    return list(loader(data, workers))


def same(a, b):
    return torch.equal(a.images, b.images) and torch.equal(a.texts, b.texts)


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    directory = tmp_path_factory.mktemp("pool")
    return write_jsonl(directory / "pool.jsonl", shapes_records(directory, 96, seed=3))


@pytest.mark.parametrize("epoch", [0, 1])
def test_text_keys_draw_what_mix_random_writes(pool, tmp_path, epoch):
    tally = Tally("mix")
    config = MixConfig(policy="random", keys=("alt", "vecap"), seed=5, epoch=epoch)
    mixed = [s.record for s in mix(iter_samples([str(pool)], tally), tally, config)]
    for record in mixed:
        record["image"] = str(pool.parent / record["image"])
    premixed = write_jsonl(tmp_path / "mixed.jsonl", mixed)

    drawn = batches(pool, 6, epoch=epoch, seed=5, text_keys=("alt", "vecap"))
    after_mix = batches(premixed, 6, epoch=epoch, seed=5)
    assert all(same(a, b) for a, b in zip(drawn, after_mix, strict=True))
    texts = torch.cat([b.texts for b in drawn])
    alt_only = torch.cat([b.texts for b in batches(pool, 6, epoch=epoch, seed=5)])
    assert 0 < (texts != alt_only).any(1).sum() < len(texts)  # a real mix of both fields


def test_bad_images_and_missing_captions_are_counted_not_trained(tmp_path):
    records = shapes_records(tmp_path, 21, seed=1)  # 16 good: the 2 batches need them all
    (tmp_path / "img" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    records[3]["image"] = "img/broken.png"
    records[7]["image"] = "img/gone.png"
    records[9]["image"] = "img/broken.png"
    for i in (11, 12):
        del records[i]["alt"]
    path = write_jsonl(tmp_path / "pool.jsonl", records)
    tally = Tally("train")
    got = batches(path, 2, batch_size=8)
    for batch in got:
        replay(batch.events, tally)
        tally.n_in += batch.n_in
        tally.n_out += len(batch.images)
    assert dict(tally.rejected) == {"bad-image": 2, "image-missing": 1}
    assert dict(tally.dropped) == {"no-caption": 2}
    assert (tally.n_in, tally.n_out) == (21, 16) and tally.balanced
    assert all(len(b.images) == 8 for b in got)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_resumed_epoch_continues_with_the_very_next_batch(pool, workers):
    whole = batches(pool, 9, workers=workers, batch_size=8)
    assert [b.worker for b in whole] == [j % max(1, workers) for j in range(9)]
    for stop in (1, 4, 5):  # odd stops rotate the workers
        positions = [(0, 0)] * max(1, workers)
        for b in whole[:stop]:
            positions[b.worker] = b.position
        rest = batches(pool, 9, workers=workers, first=stop, positions=positions)
        assert len(rest) == 9 - stop
        assert all(same(a, b) for a, b in zip(whole[stop:], rest, strict=True))


def test_a_short_share_is_read_again_and_epochs_reshuffle(pool):
    # 96 samples, 20 batches of 8: the pass runs out and a second pass begins
    first = batches(pool, 20, batch_size=8)
    assert first[-1].position[0] == 1
    again = batches(pool, 20, batch_size=8)
    assert all(same(a, b) for a, b in zip(first, again, strict=True))
    other_epoch = batches(pool, 20, batch_size=8, epoch=1)
    assert not all(same(a, b) for a, b in zip(first, other_epoch, strict=True))


def test_ranks_and_workers_split_the_data_without_overlap(pool):
    seen = []
    for rank in range(2):
        for batch in batches(pool, 6, rank=rank, world_size=2, workers=2, batch_size=8):
            seen.extend(map(tuple, batch.texts.tolist()))
            assert batch.position[0] == 0  # one pass: nothing read twice
    alone = [tuple(t) for b in batches(pool, 12, batch_size=8) for t in b.texts.tolist()]
    assert sorted(seen) == sorted(alone)


def test_buffer_shuffle_is_a_seeded_permutation():
    import random

    draw = lambda seed: lambda n: random.Random(f"{seed}-{n}").random()  # noqa: E731
    out = list(buffer_shuffle(range(100), 10, draw(1)))
    assert sorted(out) == list(range(100)) and out != list(range(100))
    assert out == list(buffer_shuffle(range(100), 10, draw(1)))
    assert out != list(buffer_shuffle(range(100), 10, draw(2)))


def test_tar_shards_train_like_the_jsonl_they_came_from(pool, tmp_path):
    import tarfile

    import orjson

    samples = list(iter_samples([str(pool)], Tally("x")))
    shard = tmp_path / "pool.tar"
    with tarfile.open(shard, "w") as tar:
        for s in samples:
            record = {k: v for k, v in s.record.items() if k != "image"}
            for ext, data in (("png", s.image_bytes()), ("json", orjson.dumps(record))):
                info = tarfile.TarInfo(f"{s.key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    a = batches(pool, 4, seed=2)
    b = batches(shard, 4, seed=2)
    assert all(same(x, y) for x, y in zip(a, b, strict=True))


def test_resampling_draws_shards_with_replacement_reproducibly(tmp_path):
    shards = []
    for s in range(3):
        records = shapes_records(tmp_path / f"s{s}", 16, seed=10 + s)
        for r in records:
            r["image"] = str(tmp_path / f"s{s}" / r["image"])
        shards.append(write_jsonl(tmp_path / f"s{s}.jsonl", records))
    plan = dict(inputs=tuple(map(str, shards)), batch_size=8, workers=1, resample=True)
    got = []
    for _ in range(2):
        data = TrainData(DataPlan(**plan), TRANSFORM, TOKENIZER)
        data.start_epoch(0, 6, 0, [(0, 0)])
        got.append(list(loader(data, 0)))
    assert all(same(a, b) for a, b in zip(*got, strict=True))
    texts = [tuple(t) for b in got[0] for t in b.texts.tolist()]
    assert len(texts) == 48 and len(set(texts)) < 48  # drawn with replacement: repeats


def test_a_copy_of_the_shards_elsewhere_trains_the_same(tmp_path):
    """The shard order derives from names below the shards' common folder, not full paths."""
    runs = []
    for where in ("a", "elsewhere/b"):
        shards = []
        for s in range(4):
            records = shapes_records(tmp_path / where / f"i{s}", 8, seed=20 + s)
            for r in records:
                r["image"] = str(tmp_path / where / f"i{s}" / r["image"])
            shards.append(str(write_jsonl(tmp_path / where / f"{s:06d}.jsonl", records)))
        plan = DataPlan(inputs=tuple(shards), batch_size=8, workers=1, shuffle_buffer=1, seed=4)
        data = TrainData(plan, TRANSFORM, TOKENIZER)
        data.start_epoch(0, 4, 0, [(0, 0)])
        runs.append(list(loader(data, 0)))
    assert all(same(a, b) for a, b in zip(*runs, strict=True))


def test_online_curation_trains_what_mix_draws_for_the_epoch(tmp_path):
    records = shapes_records(tmp_path, 48, seed=4)
    for i, record in enumerate(records):
        record["curate"] = {"entries": [i % 3], "p": (i % 4 + 1) / 4}  # 1 in 4: p = 1
    del records[5]["curate"]  # never curated: rejected, not trained
    path = write_jsonl(tmp_path / "pool.jsonl", records)
    skipped = []
    for epoch in (0, 1):
        tally = Tally("train")
        got = batches(path, 2, epoch=epoch, seed=2, online_curation=True, shuffle_buffer=48)
        for batch in got:
            replay(batch.events, tally)
            tally.n_in += batch.n_in
            tally.n_out += len(batch.images)
        assert tally.balanced and tally.n_out == 16
        assert tally.rejected["no-curate-p"] <= 1
        not_drawn = {s.key for kind, (rule, s, _), _ in _drops(got) if rule == "online-curation"}
        mixed = Tally("mix")
        config = MixConfig(keys=("alt",), seed=2, epoch=epoch, online_curation=True)
        kept = {s.key for s in mix(iter_samples([str(path)], mixed), mixed, config)}
        assert not_drawn and not not_drawn & kept  # left out by the very draw mix makes
        skipped.append(not_drawn)
    assert skipped[0] != skipped[1]


def _drops(got):
    return [event for batch in got for event in batch.events if event[0] == "drop"]


# -- --positives K: B images and B·K texts ----------------------------------------------------


def test_positives_put_each_images_k_captions_in_its_rows(tmp_path):
    """Image i's captions at rows i·K … i·K + K − 1: the record's own, distinct, and
    a record with fewer than K repeats them, counted in repeated-captions."""
    records = shapes_records(tmp_path, 12, seed=6)
    for r in records:
        r["vecap"] = [r["vecap"], f"{r['alt']} again"]  # 3 distinct captions per record
    records[5]["vecap"] = records[5]["alt"]  # one distinct caption: repeated
    pool = write_jsonl(tmp_path / "p.jsonl", records)
    k = 3
    got = batches(pool, 3, batch_size=4, seed=2, positives=k, text_keys=("alt", "vecap"))
    owner = {}  # tokenized caption -> its record
    for r in records:
        texts = [r["alt"], *(r["vecap"] if isinstance(r["vecap"], list) else [r["vecap"]])]
        for row in TOKENIZER(texts):
            owner[tuple(row.tolist())] = r["key"]
    repeated = 0
    for batch in got:
        assert batch.images.shape[0] == 4 and batch.texts.shape[0] == 4 * k
        for i in range(4):
            rows = [tuple(t.tolist()) for t in batch.texts[i * k : (i + 1) * k]]
            assert len({owner[row] for row in rows}) == 1  # one record's captions
            if len(set(rows)) < k:
                assert owner[rows[0]] == records[5]["key"] and len(set(rows)) == 1
                repeated += 1
        repeated_events = [e for e in batch.events if e[1][0] == "repeated-captions"]
        assert len(repeated_events) == sum(
            len({tuple(t.tolist()) for t in batch.texts[i * k : (i + 1) * k]}) < k for i in range(4)
        )
    assert repeated == 1  # record 5, once: the 3 batches are the 12 records
    again = batches(pool, 3, batch_size=4, seed=2, positives=k, text_keys=("alt", "vecap"))
    assert all(same(a, b) for a, b in zip(got, again, strict=True))


def test_positives_draw_from_text_and_alt_by_default(tmp_path):
    records = shapes_records(tmp_path, 8, seed=7)
    for r in records:
        r["text"] = r.pop("vecap")
    pool = write_jsonl(tmp_path / "p.jsonl", records)
    (batch,) = batches(pool, 1, batch_size=8, positives=2)
    tally = Tally("train")
    replay(batch.events, tally)
    assert "repeated-captions" not in tally.extra  # both captions of each, distinct
    want = {tuple(t.tolist()) for r in records for t in TOKENIZER([r["alt"], r["text"]])}
    assert {tuple(t.tolist()) for t in batch.texts} == want
