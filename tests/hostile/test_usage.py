"""Numbers and checkpoints from the user's side: NaN is not a probability, and a file
that does not load as weights (damaged, foreign, hostile) is one line, never a
traceback and never code run."""

import os
import pickle
import random

import pytest

from tests.conftest import make_records, tiny_image, write_jsonl

pytest.importorskip("torch")


def one_line(result) -> str:
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    return lines[0]


@pytest.fixture
def pool(tmp_path):
    """Four records with real images, so each command gets as far as its model."""
    rng = random.Random(0)
    records = make_records(4)
    for record in records:
        (tmp_path / f"{record['key']}.png").write_bytes(tiny_image(rng))
        record["image"] = f"{record['key']}.png"
    return write_jsonl(tmp_path / "pool.jsonl", records)


@pytest.mark.parametrize("probs", ["nan,1", "inf,0", "0.5,nan", "-inf,1"])
def test_mix_refuses_non_finite_probabilities(vecap, pool, probs):
    result = vecap("mix", pool, "--keys", "alt,vecap", "--probs", probs)
    assert result.code == 2
    assert "--probs" in result.err and "Traceback" not in result.err


@pytest.mark.parametrize(
    "flags",
    [
        ["--text-keys", "alt,vecap", "--text-probs", "nan,1"],
        ["--lr", "nan"],
        ["--lr", "inf"],
        ["--wd", "nan"],
        ["--grad-clip", "inf"],
    ],
)
def test_train_refuses_non_finite_numbers(vecap, pool, tmp_path, flags):
    result = vecap("train", pool, "-o", tmp_path / "run", *flags)
    assert result.code == 2, result.err
    assert flags[-2] in result.err and "Traceback" not in result.err


def test_the_library_refuses_them_too():
    from vecap_cli.steps.mix import MixConfig
    from vecap_cli.train.config import TrainConfig

    with pytest.raises(ValueError, match="finite"):
        MixConfig(keys=("alt", "vecap"), probs=(float("nan"), 1.0))
    with pytest.raises(ValueError, match="finite"):
        TrainConfig(("x.tar",), "out", text_keys=("alt", "vecap"), text_probs=(float("inf"), 0.0))


class _RunsCode:
    """Unpickling this runs a shell command: what a hostile checkpoint does."""

    marker = ""

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _bad_checkpoints(directory):
    """name -> path of files that must not load as weights."""
    import torch

    _RunsCode.marker = str(directory / "PWNED")
    files = {}
    with open(directory / "pickle.pt", "wb") as f:  # a plain pickle that runs a command
        pickle.dump(_RunsCode(), f)
    files["code-pickle"] = directory / "pickle.pt"
    torch.save(_RunsCode(), directory / "zip.pt")  # the same inside torch's zip format
    files["code-zip"] = directory / "zip.pt"
    (directory / "noise.pt").write_bytes(os.urandom(4096))
    files["noise"] = directory / "noise.pt"
    (directory / "empty.pt").write_bytes(b"")
    files["empty"] = directory / "empty.pt"
    torch.save({"state_dict": {}, "step": 0}, directory / "whole.pt")
    data = (directory / "whole.pt").read_bytes()
    (directory / "cut.pt").write_bytes(data[: len(data) // 2])
    files["truncated"] = directory / "cut.pt"
    torch.save([1, 2, 3], directory / "list.pt")
    files["a-list"] = directory / "list.pt"
    torch.save({"state_dict": [1], "step": 3}, directory / "odd.pt")
    files["odd-state-dict"] = directory / "odd.pt"
    return files


BAD = ["code-pickle", "code-zip", "noise", "empty", "truncated", "a-list", "odd-state-dict"]


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    return _bad_checkpoints(tmp_path_factory.mktemp("checkpoints"))


@pytest.fixture(scope="module")
def open_clip_model(tmp_path_factory):
    from tests.eval.tiny import write_openclip

    config, _ = write_openclip(tmp_path_factory.mktemp("model"))
    return config


def _assert_refused(result, path):
    """Exit 1 with the error as the last line, naming the file; nothing else but info lines."""
    assert result.code == 1, result.err
    lines = result.err.strip().splitlines()
    assert "error:" in lines[-1] and str(path) in lines[-1], result.err
    assert sum("error" in line for line in lines) == 1 and "Traceback" not in result.err
    assert not (path.parent / "PWNED").exists(), "a checkpoint ran code"


@pytest.mark.parametrize("kind", BAD)
def test_train_pretrained_that_does_not_load_is_one_line(vecap, pool, tmp_path, bad_files, kind):
    result = vecap("train", pool, "-o", tmp_path / "run", "--pretrained", bad_files[kind])
    _assert_refused(result, bad_files[kind])


@pytest.mark.parametrize("kind", BAD)
def test_train_resume_from_a_bad_checkpoint_is_one_line(vecap, pool, tmp_path, bad_files, kind):
    run = ("-o", tmp_path / "run", "--batch-size", "2", "--resume", bad_files[kind])
    result = vecap("train", pool, *run)
    _assert_refused(result, bad_files[kind])


@pytest.mark.parametrize("kind", BAD)
def test_eval_pretrained_that_does_not_load_is_one_line(
    vecap, pool, bad_files, open_clip_model, kind
):
    result = vecap(
        "eval", "--task", "retrieval", pool, "--model", open_clip_model,
        "--pretrained", bad_files[kind],
    )  # fmt: skip
    _assert_refused(result, bad_files[kind])


@pytest.mark.slow
def test_caption_pretrained_that_does_not_load_is_one_line(vecap, pool, bad_files):
    result = vecap(
        "caption", pool, "--backend", "openclip", "--model", "coca_ViT-B-32",
        "--pretrained", bad_files["code-pickle"], "--device", "cpu",
    )  # fmt: skip
    _assert_refused(result, bad_files["code-pickle"])


def test_caption_pretrained_beside_a_model_dir_is_refused_not_ignored(vecap, pool, bad_files):
    from tests.tiny_models import tiny_model

    model = f"local-dir:{tiny_model('coca')}"
    result = vecap("caption", pool, "--backend", "openclip", "--model", model,
                   "--pretrained", bad_files["noise"])  # fmt: skip
    assert result.code == 1 and "--pretrained cannot go with" in one_line(result)
