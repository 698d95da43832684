"""vecap embed end to end on tiny open_clip models: the stored rows are the model's
embeddings of augment(image, seed, key, k) and of each caption; ensembles; every
record accounted for; mix and curate carry the members through; --resume.

The runs share this process (torch starts once): `here` calls the CLI's main."""

import functools
import io
import json
import random
import subprocess
import sys
import tarfile

import numpy as np
import orjson
import pytest

from tests.conftest import REPO, run_vecap
from tests.eval.tiny import TINY_OPENCLIP, caption, image_bytes, write_openclip
from tests.tiny_models import one_torch_thread
from vecap_cli.cli.app import main
from vecap_cli.stream.runner import iter_samples
from vecap_cli.stream.tally import Tally
from vecap_cli.stream.teacher import augment_key, read_teacher

SEED = 7


def here(*args) -> int:
    try:
        with one_torch_thread():
            main([str(a) for a in args])
    except SystemExit as exit:
        return exit.code or 0
    return 0


def write_tar(path, samples: list[tuple[dict, dict[str, bytes]]]):
    with tarfile.open(path, "w") as tar:
        for record, members in samples:
            for ext, data in {"json": orjson.dumps(record), **members}.items():
                info = tarfile.TarInfo(f"{record['key']}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def read(path) -> list:
    return list(iter_samples([str(path)], Tally("read")))


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    """A tar of 6 good records (alt a string, vecap a list of two, one record with
    neither), one without an image, one with a broken image, one that already has a
    teacher; two tiny models of one size (seeds 0, 1) and one of another size."""
    root = tmp_path_factory.mktemp("embed")
    rng = random.Random(0)
    samples = []
    for i in range(6):
        record = {"key": f"r{i}", "alt": caption(rng), "vecap": [caption(rng), caption(rng)]}
        if i == 3:
            record = {"key": "r3", "other": 1}
        samples.append((record, {"png": image_bytes(rng, size=40 + 4 * i)}))
    samples.insert(2, ({"key": "noimage", "alt": "a dog"}, {}))
    samples.insert(4, ({"key": "broken", "alt": "a dog"}, {"png": b"\x89PNG not really"}))
    web = {"key": "web", "alt": "a cat", "teacher": {"image": "../../etc/passwd"}}
    samples.append((web, {"png": image_bytes(rng)}))
    models = {}
    for name, seed in (("a", 0), ("b", 1)):
        (root / name).mkdir()
        config, checkpoint = write_openclip(root / name, seed=seed)
        models[name] = (config, checkpoint)
    return write_tar(root / "in.tar", samples), models


def flags(models, *names) -> list:
    out = []
    for name in names:
        out += ["--model", models[name][0], "--pretrained", models[name][1]]
    return [*out, "-k", 2, "--text-keys", "alt,vecap", "--seed", SEED, "-q"]


@pytest.fixture(scope="module")
def one(pool, tmp_path_factory):
    """One model over the pool: output, stats and rejects."""
    tar, models = pool
    out = tmp_path_factory.mktemp("one")
    code = here("embed", tar, *flags(models, "a"), "-o", out / "o.tar", "--stats", out / "s.json",
                "--rejects", out / "r.jsonl")  # fmt: skip
    assert code == 0
    return out


@functools.cache
def _load(config, checkpoint):
    from vecap_cli.eval.models import load_model

    return load_model(config, checkpoint)


def expected(models, names, sample, ensemble="concat"):
    """(image (K, D), {field: (C, D)}) computed here: the models as eval loads them,
    on augment(image, SEED, key, k)."""
    import torch
    import torch.nn.functional as F
    from PIL import Image

    from vecap_cli.steps.mix import captions
    from vecap_cli.stream.augment import augment

    image = Image.open(io.BytesIO(sample.members["png"])).convert("RGB")
    images, texts = [], {}
    for name in names:
        loaded = _load(str(models[name][0]), str(models[name][1]))
        views = torch.stack(
            [loaded.preprocess(augment(image, SEED, sample.key, k)) for k in (0, 1)]
        )
        with torch.no_grad():
            images.append(F.normalize(loaded.model.encode_image(views), dim=-1))
            for field in ("alt", "vecap"):
                if caps := captions(sample.record.get(field)):
                    emb = F.normalize(loaded.model.encode_text(loaded.tokenizer(caps)), dim=-1)
                    texts.setdefault(field, []).append(emb)

    def join(parts):
        if len(parts) == 1:
            return parts[0]
        joined = torch.cat(parts, -1) if ensemble == "concat" else torch.stack(parts).mean(0)
        return F.normalize(joined, dim=-1)

    return join(images).numpy(), {f: join(p).numpy() for f, p in texts.items()}


def test_every_record_is_embedded_or_rejected(one):
    stats = orjson.loads((one / "s.json").read_bytes())
    assert (stats["in"], stats["out"], stats["balanced"]) == (9, 6, True)
    assert stats["rejected"] == {"image-missing": 1, "bad-image": 1, "has-teacher": 1}
    reasons = [orjson.loads(line)["reason"] for line in (one / "r.jsonl").read_bytes().splitlines()]
    assert reasons == ["image-missing", "bad-image", "has-teacher"]


def test_rows_are_the_models_embeddings_of_the_seeded_augmentations(pool, one):
    _, models = pool
    out = read(one / "o.tar")
    assert [s.key for s in out] == [f"r{i}" for i in range(6)]
    for sample in out:
        image, texts = read_teacher(sample)
        meta = sample.record["teacher"]
        assert meta["augmentations"] == 2 and meta["dim"] == 32 and meta["seed"] == SEED
        assert meta["ensemble"] == "concat" and len(meta["models"]) == 1
        assert meta["key"] == sample.key  # the key the views were drawn with
        assert image.dtype == np.float16 and image.shape == (2, 32)
        want_image, want_texts = expected(models, ["a"], sample)
        np.testing.assert_allclose(image.astype(np.float32), want_image, atol=2e-3)
        assert set(texts) == set(want_texts)
        for field, rows in texts.items():
            np.testing.assert_allclose(rows.astype(np.float32), want_texts[field], atol=2e-3)
        assert not np.allclose(image[0], image[1])  # two views, two rows
    r3 = next(s for s in out if s.key == "r3")
    assert r3.record["teacher"]["text"] == {} and r3.record["other"] == 1
    r0 = out[0]
    assert r0.record["teacher"]["text"] == {"alt": "teacher.alt.npy", "vecap": "teacher.vecap.npy"}
    assert read_teacher(r0)[1]["vecap"].shape == (2, 32)  # a row per caption of the list


@pytest.mark.parametrize("ensemble", ["concat", "mean"])
def test_an_ensemble_concatenates_or_averages_then_normalizes(pool, tmp_path, ensemble):
    tar, models = pool
    out = tmp_path / "o.tar"
    assert here("embed", tar, *flags(models, "a", "b"), "--ensemble", ensemble, "-o", out) == 0
    sample = read(out)[0]
    image, texts = read_teacher(sample)
    assert image.shape == (2, 64 if ensemble == "concat" else 32)
    want_image, want_texts = expected(models, ["a", "b"], sample, ensemble)
    np.testing.assert_allclose(image.astype(np.float32), want_image, atol=2e-3)
    np.testing.assert_allclose(texts["alt"].astype(np.float32), want_texts["alt"], atol=2e-3)
    assert len(sample.record["teacher"]["models"]) == 2


def test_mean_of_teachers_of_two_sizes_is_one_line(pool, tmp_path, capsys):
    tar, models = pool
    small = tmp_path / "vecap-tiny-small.json"
    small.write_text(json.dumps({**TINY_OPENCLIP, "embed_dim": 16}))
    code = here("embed", tar, "--model", models["a"][0], "--model", small,
                "--pretrained", f"{models['a'][1]},-", "--ensemble", "mean",
                "-o", tmp_path / "o.tar", "-q")  # fmt: skip
    assert code == 1
    assert (
        capsys.readouterr()
        .err.strip()
        .splitlines()[-1]
        .startswith("vecap embed: error: --ensemble mean needs one embedding size, got ")
    )
    assert not (tmp_path / "o.tar").exists()


def test_overwrite_replaces_a_teacher_the_record_has(pool, one, tmp_path):
    _, models = pool
    out = tmp_path / "o.tar"
    assert here("embed", one / "o.tar", *flags(models, "a"), "-k", 1, "-o", out, "--stats",
                tmp_path / "s.json") == 0  # fmt: skip
    assert orjson.loads((tmp_path / "s.json").read_bytes())["rejected"] == {"has-teacher": 6}
    assert here("embed", one / "o.tar", *flags(models, "a"), "-k", 1, "--overwrite",
                "--text-keys", "alt", "-o", out) == 0  # fmt: skip
    for sample in read(out):
        image, texts = read_teacher(sample)
        assert image.shape == (1, 32) and set(texts) <= {"alt"}
        assert sorted(e for e in sample.members if e.startswith("teacher.")) == sorted(
            ["teacher.img.npy", *(["teacher.alt.npy"] if texts else [])]
        )


def teacher_members(samples) -> dict:
    return {
        s.key: (s.record["teacher"], {e: d for e, d in s.members.items() if e.endswith(".npy")})
        for s in samples
    }


def test_mix_and_curate_carry_the_embeddings_through(one, tmp_path):
    embedded = teacher_members(read(one / "o.tar"))
    mixed = tmp_path / "mixed.tar"
    assert here("mix", one / "o.tar", "--keys", "alt", "-o", mixed, "-q") == 0
    mixed_members = teacher_members(read(mixed))
    assert len(mixed_members) == 5  # r3 has no caption to mix
    assert all(mixed_members[key] == embedded[key] for key in mixed_members)
    expanded = tmp_path / "expanded.tar"  # one record per caption: renamed KEY_alt, ...
    assert here("mix", one / "o.tar", "--policy", "all", "-o", expanded, "-q") == 0
    renamed = read(expanded)
    assert len(renamed) == 15 and all(s.key != augment_key(s) for s in renamed)
    assert all(teacher_members([s])[s.key] == embedded[augment_key(s)] for s in renamed)
    curated = tmp_path / "curated.tar"
    metadata = REPO / "tests" / "data" / "curate-metadata.json"
    assert here("curate", mixed, "--metadata", metadata, "--t", 1000, "-o", curated, "-q") == 0
    kept = teacher_members(read(curated))
    assert kept and all(kept[key] == embedded[key] for key in kept)
    for sample in read(curated):
        read_teacher(sample)


@pytest.mark.parametrize("command", [["rewrite"], ["filter", "dedup", "--exact"]])
def test_rewrite_and_filter_carry_the_embeddings_through(one, tmp_path, command):
    out = tmp_path / "o.tar"
    assert here(*command, one / "o.tar", "-o", out, "-q") == 0
    embedded, kept = teacher_members(read(one / "o.tar")), teacher_members(read(out))
    assert kept and all(kept[key] == embedded[key] for key in kept)


def test_a_resumed_run_keeps_the_finished_shards(pool, one, tmp_path):
    tar, models = pool
    args = ["embed", tar, *flags(models, "a"), "-o", tmp_path / "out" / "%04d.tar",
            "--shard-size", 2, "--stats", tmp_path / "s.json"]  # fmt: skip
    assert here(*args) == 0
    shards = sorted((tmp_path / "out").glob("*.tar"))
    first = [p.read_bytes() for p in shards]
    assert here(*args, "--resume") == 0  # every shard done: nothing embedded again
    assert [p.read_bytes() for p in shards] == first
    assert orjson.loads((tmp_path / "s.json").read_bytes())["out"] == 6
    together = teacher_members(s for p in shards for s in read(p))
    assert together == teacher_members(read(one / "o.tar"))


def test_jsonl_output_is_a_usage_error_in_one_line(pool, tmp_path):
    tar, _ = pool
    jsonl = tmp_path / "in.jsonl"
    jsonl.write_text('{"key": "a", "alt": "x"}\n')
    for args in ([jsonl], [jsonl, "-o", tmp_path / "o.jsonl"], [tar, "--format", "jsonl"]):
        result = run_vecap("embed", *args, "--model", "vecap-tiny", "-q")
        assert result.code == 2 and "Traceback" not in result.err
        assert "the embeddings are tar members: write a tar" in result.err
    bad = run_vecap("embed", tar, "--model", "vecap-tiny", "--text-keys", "alt,../x", "-o",
                    tmp_path / "o.tar")  # fmt: skip
    assert bad.code == 2 and "teacher.FIELD.npy" in bad.err and "Traceback" not in bad.err


def test_embed_help_does_not_import_torch():
    code = (
        "import sys\nfrom vecap_cli.cli.app import main\n"
        "try:\n    main(['embed', '--help'])\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('torch', 'numpy', 'open_clip') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "--augmentations" in out.stdout and out.stdout.strip().splitlines()[-1] == "[]"


def test_rejects_are_written_in_input_order_though_decoding_runs_ahead(pool, tmp_path):
    """The reader rejects a bad record as it reads ahead; the stage rejects an earlier
    one only when its turn comes: --rejects still reads in input order."""
    _, models = pool
    rng = random.Random(3)
    good = [({"key": f"g{i}", "alt": "a dog"}, {"png": image_bytes(rng)}) for i in range(4)]
    broken = ({"key": "broken", "alt": "a dog"}, {"png": b"\x89PNG not really"})
    path = write_tar(tmp_path / "in.tar", [good[0], broken, *good[1:3]])
    with tarfile.open(path, "a") as out:  # then a record whose JSON does not parse
        for ext, data in (("json", b"{not json"), ("png", image_bytes(rng))):
            info = tarfile.TarInfo(f"badjson.{ext}")
            info.size = len(data)
            out.addfile(info, io.BytesIO(data))
    code = here("embed", path, *flags(models, "a"), "--batch-size", 2, "-o", tmp_path / "o.tar",
                "--rejects", tmp_path / "r.jsonl")  # fmt: skip
    assert code == 0
    lines = [orjson.loads(line) for line in (tmp_path / "r.jsonl").read_bytes().splitlines()]
    assert [line["reason"] for line in lines] == ["bad-image", "bad-json"]
    assert [line["idx"] for line in lines] == sorted(line["idx"] for line in lines)
