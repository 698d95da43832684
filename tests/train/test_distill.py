"""vecap train --distill: the stored augmentation and teacher rows each sample trains
with, the rejections of records without usable teacher data, the weighted loss, a run."""

import io
import tarfile

import numpy as np
import orjson
import pytest
import torch
from PIL import Image

from tests.train.conftest import shapes_records
from vecap_cli.core.distill import distill_loss
from vecap_cli.rand import uniform
from vecap_cli.stream.augment import augment
from vecap_cli.stream.sample import Sample
from vecap_cli.stream.tally import Tally
from vecap_cli.train.data import DataPlan, TrainData, loader, replay
from vecap_cli.train.losses import make_loss
from vecap_cli.train.teacher import BAD_TEACHER, NO_TEACHER, TeacherDraw, TeacherRejected

open_clip = pytest.importorskip("open_clip")
TRANSFORM = open_clip.image_transform(32, is_train=True)
TOKENIZER = open_clip.SimpleTokenizer(context_length=32)
K, DT, AUG_SEED = 4, 6, 11


def _npy(array) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.asarray(array, dtype=np.float16))
    return buf.getvalue()


def _image_rows():
    """Row k of a record's teacher image embeddings is e_k: its index reads back."""
    return np.eye(K, DT)


def _text_rows(n):
    """Row c of a field's teacher text embeddings is e_{DT−1−c} (distinct from images')."""
    return np.eye(DT)[::-1][:n]


def _teacher_sample(record, members=None):
    record = dict(record)
    members = members or {}
    members.setdefault("teacher.img.npy", _npy(_image_rows()))
    n = len(record["alt"]) if isinstance(record["alt"], list) else 1
    members.setdefault("teacher.alt.npy", _npy(_text_rows(n)))
    record["teacher"] = {
        "image": "teacher.img.npy",
        "text": {"alt": "teacher.alt.npy"},
        "augmentations": K,
        "dim": DT,
        "seed": AUG_SEED,
        "models": ["tiny"],
        "ensemble": "mean",
    }
    return record, members


def _write_shard(path, samples):
    with tarfile.open(path, "w") as tar:
        for record, members, png in samples:
            items = [("png", png), ("json", orjson.dumps(record)), *members.items()]
            for ext, data in items:
                info = tarfile.TarInfo(f"{record['key']}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def _shard(tmp_path, n, broken=()):
    """n records with teacher data, except where `broken` says how to spoil them."""
    samples = []
    for i, record in enumerate(shapes_records(tmp_path, n, seed=8)):
        png = (tmp_path / record.pop("image")).read_bytes()
        record["alt"] = [record["alt"], record.pop("vecap")]  # two captions: rows 0 and 1
        record, members = _teacher_sample(record)
        spoil = dict(broken).get(i)
        if spoil == "none":
            del record["teacher"]
        elif spoil == "garbage":
            members["teacher.img.npy"] = b"\x93NUMPY not really"
        elif spoil == "rows":
            members["teacher.alt.npy"] = _npy(_text_rows(1))  # 1 row for 2 captions
        elif spoil == "nan":
            members["teacher.img.npy"] = _npy(np.full((K, DT), np.nan))
        samples.append((record, members, png))
    return _write_shard(tmp_path / "t.tar", samples)


def _batches(path, steps, epoch=0, **plan):
    plan = DataPlan(inputs=(str(path),), batch_size=4, workers=1, shuffle_buffer=8, **plan)
    data = TrainData(plan, TRANSFORM, TOKENIZER)
    data.start_epoch(epoch, steps, 0, [(0, 0)])
    return list(loader(data, 0))


# -- the draw ----------------------------------------------------------------------------


def test_the_draw_applies_the_stored_augmentation_and_takes_its_rows():
    image = Image.new("RGB", (40, 30), (10, 200, 30))
    image.putpixel((3, 4), (255, 0, 0))
    record, members = _teacher_sample({"key": "r1", "alt": ["one", "two", "three"]})
    sample = Sample(record, members)
    draw = TeacherDraw(seed=5, keys=("text", "alt"))
    for epoch in range(6):
        got, t_image, t_text = draw(sample, image, "three", epoch)
        k = int(uniform(5, "distill", "r1", epoch) * K)
        assert got.tobytes() == augment(image, AUG_SEED, "r1", k).tobytes()
        np.testing.assert_array_equal(t_image, np.eye(K, DT, dtype=np.float32)[k])
        np.testing.assert_array_equal(t_text, _text_rows(3)[2].astype(np.float32))
    ks = {int(uniform(5, "distill", "r1", e) * K) for e in range(40)}
    assert ks == set(range(K))  # every stored augmentation is drawn


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda r, m: r.pop("teacher"), NO_TEACHER),
        (lambda r, m: r["teacher"].update(seed="7"), BAD_TEACHER),
        (lambda r, m: m.pop("teacher.img.npy"), BAD_TEACHER),
        (lambda r, m: m.update({"teacher.img.npy": b"garbage"}), BAD_TEACHER),
        (lambda r, m: m.update({"teacher.img.npy": _npy(np.zeros(DT))}), BAD_TEACHER),
        (lambda r, m: m.update({"teacher.alt.npy": _npy(np.ones((2, DT + 1)))}), BAD_TEACHER),
        (lambda r, m: m.update({"teacher.alt.npy": _npy(np.ones((3, DT)))}), BAD_TEACHER),
        (lambda r, m: r["teacher"]["text"].pop("alt"), BAD_TEACHER),
        (lambda r, m: m.update({"teacher.img.npy": _npy(np.zeros((K, DT)))}), BAD_TEACHER),
    ],
)
def test_unusable_teacher_data_is_one_rejection(change, reason):
    record, members = _teacher_sample({"key": "r2", "alt": ["one", "two"]})
    change(record, members)
    with pytest.raises(TeacherRejected) as caught:
        TeacherDraw(seed=0, keys=("alt",))(
            Sample(record, members), Image.new("RGB", (8, 8)), "one", 0
        )
    assert caught.value.reason == reason
    assert "\n" not in str(caught.value)


# -- batches -------------------------------------------------------------------------------


def test_batches_carry_teacher_rows_and_count_rejections(tmp_path):
    broken = {1: "none", 4: "garbage", 6: "rows", 9: "nan"}
    shard = _shard(tmp_path, 12, broken)
    got = _batches(shard, 2, distill=True, seed=3)
    tally = Tally("train")
    for batch in got:
        replay(batch.events, tally)
        tally.n_in += batch.n_in
        tally.n_out += len(batch.images)
        t_image, t_text = batch.teacher
        assert t_image.shape == t_text.shape == (4, DT) and t_image.dtype == torch.float32
        assert set(t_image.argmax(1).tolist()) <= set(range(K))  # a row e_k
        assert set(t_text.argmax(1).tolist()) <= {DT - 1, DT - 2}  # caption 0 or 1's row
    assert dict(tally.rejected) == {NO_TEACHER: 1, BAD_TEACHER: 3}
    assert (tally.n_in, tally.n_out) == (12, 8) and tally.balanced
    # without --distill the same shard trains every record and carries no teacher
    plain = _batches(shard, 3, seed=3)
    assert all(b.teacher is None for b in plain) and sum(len(b.images) for b in plain) == 12


# -- the loss --------------------------------------------------------------------------------


def test_the_loss_is_one_minus_lambda_contrastive_plus_lambda_distill():
    gen = torch.Generator().manual_seed(0)
    feats = [torch.nn.functional.normalize(torch.randn(6, 8, generator=gen), dim=-1) for _ in "ab"]
    teacher = [
        torch.nn.functional.normalize(torch.randn(6, 5, generator=gen), dim=-1) for _ in "ab"
    ]
    out = {"image_features": feats[0], "text_features": feats[1], "logit_scale": torch.tensor(10.0)}
    parts = make_loss("clip", distill_weight=0.3, teacher_scale=50.0)(out, teacher)
    plain = make_loss("clip")(out)
    torch.testing.assert_close(parts["contrastive_loss"], 0.7 * plain["contrastive_loss"])
    want = distill_loss(*feats, torch.tensor(10.0), *teacher, 50.0)
    torch.testing.assert_close(parts["distill_loss"], 0.3 * want)
    only = make_loss("clip", distill_weight=1.0)(out, teacher)  # MobileCLIP's default
    assert set(only) == {"distill_loss"}


# -- a run -------------------------------------------------------------------------------------


def test_train_distill_runs_and_reports_rejections(tmp_path, capsys):
    from tests.train.test_loop import vecap_in_process

    shard = _shard(tmp_path, 10, {2: "none"})
    stats, log = tmp_path / "stats.json", tmp_path / "log.jsonl"
    code, err = vecap_in_process(
        capsys, "train", shard, "-o", tmp_path / "o", "--batch-size", "4", "--workers", "0",
        "--train-num-samples", "8", "--distill", "--distill-weight", "0.5", "--stats", stats,
        "--log", log, "--warmup", "1",
    )  # fmt: skip
    assert code == 0, err
    counts = orjson.loads(stats.read_bytes())
    assert counts["rejected"] == {NO_TEACHER: 1} and counts["out"] == 8 and counts["balanced"]
    steps = [orjson.loads(line) for line in log.read_bytes().splitlines()]
    steps = [s for s in steps if "loss" in s]
    assert steps and all({"contrastive_loss", "distill_loss"} <= set(s) for s in steps)
    assert all(np.isfinite(s["loss"]) for s in steps)


def test_bad_distill_weight_is_a_usage_error(tmp_path, capsys):
    from tests.train.test_loop import vecap_in_process

    shard = _shard(tmp_path, 4)
    code, err = vecap_in_process(
        capsys, "train", shard, "-o", tmp_path / "o", "--distill", "--distill-weight", "1.5"
    )
    assert code == 2 and "--distill-weight" in err and "Traceback" not in err


def test_a_renamed_record_crops_as_the_key_it_was_embedded_under():
    """mix --policy all renames records (KEY_alt); the stored rows are of the
    augmentations of the key `vecap embed` saw, which it keeps in teacher.key."""
    image = Image.new("RGB", (40, 30), (10, 200, 30))
    image.putpixel((30, 20), (255, 0, 0))
    record, members = _teacher_sample({"key": "r1_alt", "alt": "one"})
    record["teacher"]["key"] = "r1"
    draw = TeacherDraw(seed=5, keys=("alt",))
    for epoch in range(4):
        got, _, _ = draw(Sample(record, members), image, "one", epoch)
        k = int(uniform(5, "distill", "r1_alt", epoch) * K)
        assert got.tobytes() == augment(image, AUG_SEED, "r1", k).tobytes()


def test_blank_captions_are_not_rows_as_embed_skips_them():
    record, members = _teacher_sample({"key": "r2", "alt": ["one", " ", "two"]})
    members["teacher.alt.npy"] = _npy(_text_rows(2))  # embed stores the two non-blank ones
    draw = TeacherDraw(seed=5, keys=("alt",))
    _, _, row = draw(Sample(record, members), Image.new("RGB", (8, 8)), "two", 0)
    np.testing.assert_array_equal(row, _text_rows(2)[1].astype(np.float32))


def test_mixs_text_trains_against_the_embedded_field_it_copies():
    """With the default keys (text, alt), mix's `text` is a copy of an embedded field
    (vecap here); embed embeds no `text`, so its row is that field's."""
    record, members = _teacher_sample({"key": "r3", "alt": "the alt"})
    record["vecap"] = ["fused one", "fused two"]
    record["text"] = "fused two"
    record["teacher"]["text"]["vecap"] = "teacher.vecap.npy"
    members["teacher.vecap.npy"] = _npy(_text_rows(2))
    draw = TeacherDraw(seed=5, keys=("text", "alt"))
    _, _, row = draw(Sample(record, members), Image.new("RGB", (8, 8)), "fused two", 0)
    np.testing.assert_array_equal(row, _text_rows(2)[1].astype(np.float32))


def test_a_record_of_another_teacher_width_is_rejected_not_batched():
    from vecap_cli.errors import VecapError
    from vecap_cli.train.teacher import teacher_dim

    record, members = _teacher_sample({"key": "r4", "alt": "one"})
    with pytest.raises(TeacherRejected, match=f"teacher width {DT}, not this run's 12"):
        TeacherDraw(seed=5, keys=("alt",), dim=12)(
            Sample(record, members), Image.new("RGB", (8, 8)), "one", 0
        )
    plain = [Sample({"key": f"p{i}", "alt": "x"}) for i in range(3)]
    assert teacher_dim([*plain, Sample(record, members)]) == DT
    with pytest.raises(VecapError, match="none of the first 3 records has teacher embeddings"):
        teacher_dim(plain, limit=3)
