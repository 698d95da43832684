"""Training runs end to end: the loss falls, counts add up, outputs are what they claim."""

import orjson
import pytest
import torch

from tests.conftest import SHARED_DATA
from tests.train.conftest import shapes_records, write_jsonl
from vecap_cli.cli.options import RunOptions
from vecap_cli.train.config import TrainConfig
from vecap_cli.train.loop import train

open_clip = pytest.importorskip("open_clip")


def run(inputs, out, opts=None, **flags):
    cfg = TrainConfig(inputs=tuple(map(str, inputs)), output=str(out), **flags)
    return train(cfg, opts or RunOptions(quiet=True))


def steps_logged(path):
    lines = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    return [line for line in lines if "loss" in line], [line for line in lines if "val" in line]


@pytest.fixture(scope="module")
def shapes_run(tmp_path_factory):
    """32 steps of vecap-tiny on 512 shapes; 2 broken images and 1 caption-less record among them."""
    work = tmp_path_factory.mktemp("run")
    records = shapes_records(work, 515, seed=0)
    (work / "img" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    records[10]["image"] = records[20]["image"] = "img/broken.jpg"
    del records[30]["alt"]
    train_set = write_jsonl(work / "train.jsonl", records)
    val_set = write_jsonl(work / "val.jsonl", shapes_records(work, 128, seed=99))
    opts = RunOptions(quiet=True, stats=str(work / "stats.json"), rejects=str(work / "rej.jsonl"))
    tally = run(
        [train_set],
        work / "out",
        opts,
        batch_size=32,
        epochs=2,
        lr=2e-3,
        warmup=5,
        workers=1,
        shuffle_buffer=64,  # the broken records, early in the input, are all reached each epoch
        log=str(work / "log.jsonl"),
        val=(str(val_set),),
        val_every=16,
    )
    return work, tally


def test_loss_falls_and_retrieval_beats_chance_on_generated_shapes(shapes_run):
    work, _ = shapes_run
    steps, vals = steps_logged(work / "log.jsonl")
    assert [s["step"] for s in steps] == list(range(1, 33))
    first, last = steps[0]["loss"], sum(s["loss"] for s in steps[-5:]) / 5
    assert last < first - 1.0, (first, last)
    assert [v["step"] for v in vals] == [16, 32]
    assert vals[-1]["val"]["t2i_r5"] > 0.15  # chance: 5 of 128 images
    assert {"lr", "samples_per_s", "logit_scale", "epoch"} <= set(steps[0])
    assert (work / "out" / "loss.png").read_bytes()[:4] == b"\x89PNG"


def test_broken_images_and_missing_captions_are_counted(shapes_run):
    work, tally = shapes_run
    stats = orjson.loads((work / "stats.json").read_bytes())
    # two epochs: each bad record counted once per epoch
    assert stats["rejected"] == {"bad-image": 4} and stats["dropped"] == {"no-caption": 2}
    assert stats["out"] == 32 * 32 and stats["balanced"] and stats["steps"] == 32
    rejects = [orjson.loads(line) for line in (work / "rej.jsonl").read_bytes().splitlines()]
    assert sorted(r["record"]["key"] for r in rejects) == ["s0-00010"] * 2 + ["s0-00020"] * 2
    assert "bad-image 4" in tally.summary()


def test_a_checkpoint_loads_in_plain_open_clip_with_the_same_embeddings(shapes_run):
    from vecap_cli.train.models import build, register_builtin_configs

    work, _ = shapes_run
    out = work / "out"
    latest = out / (out / "latest").read_text().strip()
    assert latest.name == "step_00000032.pt"
    ours = build("vecap-tiny", str(latest)).model.eval()
    register_builtin_configs()
    by_name, _, _ = open_clip.create_model_and_transforms("vecap-tiny", pretrained=str(latest))
    by_dir, _, _ = open_clip.create_model_and_transforms(f"local-dir:{out}")
    images = torch.randn(4, 3, 32, 32)
    texts = open_clip.get_tokenizer("vecap-tiny")(["a red circle", "a", "b", "c"])
    with torch.no_grad():
        want = ours.encode_image(images), ours.encode_text(texts)
        for model in (by_name.eval(), by_dir.eval()):
            assert torch.equal(model.encode_image(images), want[0])
            assert torch.equal(model.encode_text(texts), want[1])
    trained = torch.load(latest, weights_only=True)["state_dict"]
    assert not torch.equal(trained["text_projection"], build("vecap-tiny").model.text_projection)


@pytest.mark.parametrize(
    ("arch", "loss"),
    [("vecap-tiny-coca", "clip"), ("vecap-tiny-sigmoid", "siglip"), ("vecap-tiny", "siglip")],
)
def test_coca_and_siglip_train(tmp_path, arch, loss):
    pool = write_jsonl(tmp_path / "p.jsonl", shapes_records(tmp_path, 16, seed=4))
    log = tmp_path / "log.jsonl"
    run(
        [pool],
        tmp_path / "out",
        model=arch,
        loss=loss,
        batch_size=4,
        workers=0,
        warmup=1,
        lr=1e-3,
        log=str(log),
    )
    steps, _ = steps_logged(log)
    assert len(steps) == 4 and all(s["loss"] == s["loss"] for s in steps)  # finite, not NaN
    if arch.endswith("coca"):
        assert {"contrastive_loss", "caption_loss"} <= set(steps[0])
    assert (tmp_path / "out" / "step_00000004.pt").is_file()


def test_pretrained_starts_from_the_checkpoint(shapes_run, tmp_path):
    from vecap_cli.train.models import build

    ckpt = shapes_run[0] / "out" / "open_clip_pytorch_model.bin"
    model = build("vecap-tiny", str(ckpt), seed=123).model
    want = torch.load(ckpt, weights_only=True)
    assert all(torch.equal(v, want[k]) for k, v in model.state_dict().items())


@pytest.mark.skipif(not (SHARED_DATA / "flickr8k").is_dir(), reason="no ../shared/data/flickr8k")
def test_loss_falls_on_flickr8k(tmp_path):
    import csv

    root = SHARED_DATA / "flickr8k"
    records, seen = [], set()
    with open(root / "captions.csv", newline="") as f:
        for row in csv.DictReader(f):
            if row["image"] in seen:
                continue
            seen.add(row["image"])
            image = root / "images" / row["image"]
            records.append({"key": f"f{len(records)}", "alt": row["caption"], "image": str(image)})
            if len(records) == 256:
                break
    pool = write_jsonl(tmp_path / "flickr.jsonl", records)
    log = tmp_path / "log.jsonl"
    run(
        [pool],
        tmp_path / "out",
        batch_size=32,
        epochs=4,
        lr=2e-3,
        warmup=4,
        workers=1,
        log=str(log),
    )
    losses = [s["loss"] for s in steps_logged(log)[0]]
    assert len(losses) == 32
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4 - 0.3, losses


def vecap_in_process(capsys, *args) -> tuple[int, str]:
    from vecap_cli.cli.app import main

    with pytest.raises(SystemExit) as done:
        main(list(map(str, args)))
    return done.value.code, capsys.readouterr().err


def test_the_summary_reports_what_trained(tmp_path, capsys):
    records = shapes_records(tmp_path, 18, seed=5)
    records[1]["image"] = "img/none.png"
    del records[2]["alt"]
    pool = write_jsonl(tmp_path / "p.jsonl", records)
    code, err = vecap_in_process(
        capsys,
        "train",
        pool,
        "-o",
        tmp_path / "o",
        "--batch-size",
        "8",
        "--workers",
        "0",
        "--shuffle-buffer",
        "1",
    )
    assert code == 0, err
    assert (
        err.strip()
        .splitlines()[-1]
        .startswith(
            "vecap train: in 18 = out 16 + dropped 1 (no-caption 1) + rejected 1 (image-missing 1)"
        )
    )


def test_a_fresh_coca_starts_with_an_initialized_caption_head():
    """open_clip leaves this projection as torch.empty found it: zeros, or inf and NaN."""
    from vecap_cli.train.models import build

    proj = build("vecap-tiny-coca", seed=0).model.text_decoder.text_projection
    std = proj.shape[0] ** -0.5
    assert torch.isfinite(proj).all()
    assert 0.8 * std < proj.std().item() < 1.2 * std


def test_online_curation_trains_the_expected_epoch_and_logs_what_it_kept(tmp_path, capsys):
    records = shapes_records(tmp_path, 40, seed=6)
    for i, record in enumerate(records):
        record["curate"] = {"entries": [i % 5], "p": 0.5 if i % 2 else 0.3}  # sum: 16
    pool = write_jsonl(tmp_path / "p.jsonl", records)
    stats = tmp_path / "stats.json"
    code, err = vecap_in_process(
        capsys, "train", pool, "-o", tmp_path / "o", "--batch-size", "8", "--workers", "0",
        "--epochs", "2", "--online-curation", "--seed", "3", "--stats", stats,
    )  # fmt: skip
    assert code == 0, err
    assert "16 samples per epoch (online curation: the sum of curate.p over 40 records" in err
    counts = orjson.loads(stats.read_bytes())
    assert counts["balanced"] and counts["out"] == 32  # 2 epochs of 2 batches of 8
    epochs = counts["online_curation"]
    assert [e["epoch"] for e in epochs] == [0, 1]
    assert sum(e["kept"] for e in epochs) == 32  # every sample kept was trained
    assert sum(e["read"] - e["kept"] for e in epochs) == counts["dropped"]["online-curation"]
    for e in epochs:
        assert f"epoch {e['epoch']}: online curation kept {e['kept']:,} of {e['read']:,}" in err


def test_online_curation_without_any_p_is_one_clear_error(tmp_path, capsys):
    pool = write_jsonl(tmp_path / "p.jsonl", shapes_records(tmp_path, 8, seed=6))
    code, err = vecap_in_process(
        capsys, "train", pool, "-o", tmp_path / "o", "--workers", "0", "--online-curation"
    )
    assert code == 1
    assert "--online-curation: no record of the 8 in the inputs has a curate.p" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("loss", ["clip", "siglip"])
def test_positives_train_k_captions_per_image(tmp_path, loss):
    """--positives 2: batches of 4 images and 8 texts through the multi-positive loss."""
    pool = write_jsonl(tmp_path / "p.jsonl", shapes_records(tmp_path, 8, seed=8))
    log, stats = tmp_path / "log.jsonl", tmp_path / "stats.json"
    tally = run(
        [pool],
        tmp_path / "out",
        RunOptions(quiet=True, stats=str(stats)),
        loss=loss,
        positives=2,
        text_keys=("alt", "vecap"),
        batch_size=4,
        workers=0,
        warmup=1,
        log=str(log),
    )
    steps, _ = steps_logged(log)
    assert len(steps) == 2 and all(s["loss"] == s["loss"] for s in steps)  # finite
    assert tally.n_out == 8  # images, not texts
    written = orjson.loads(stats.read_bytes())
    assert written["positives"] == 2 and written["loss_impl"] == "fused"
    saved = torch.load(tmp_path / "out" / "step_00000002.pt", weights_only=True)
    assert saved["config"]["positives"] == 2


def test_positives_with_coca_is_one_clear_error(tmp_path, capsys):
    pool = write_jsonl(tmp_path / "p.jsonl", shapes_records(tmp_path, 8, seed=8))
    code, err = vecap_in_process(
        capsys, "train", pool, "-o", tmp_path / "o", "--model", "vecap-tiny-coca",
        "--positives", "2", "--batch-size", "4", "--workers", "0",
    )  # fmt: skip
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1, err
    assert "--positives 2: CoCa's caption loss wants one caption per image" in lines[0]
