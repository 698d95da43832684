"""`vecap train` as users run it: resumable after a kill, one clear line on bad flags."""

import re
import signal
import subprocess
import sys

import orjson
import pytest
import torch

from tests.train.conftest import shapes_records, write_jsonl

pytest.importorskip("open_clip")

RUN = [
    "--batch-size", "8", "--epochs", "2", "--train-num-samples", "96", "--warmup", "3",
    "--save-every", "5", "--workers", "2", "--seed", "1", "--lr", "1e-3",
]  # fmt: skip


def vecap_in_process(capsys, *args) -> tuple[int, str]:
    from vecap_cli.cli.app import main

    with pytest.raises(SystemExit) as done:
        main(list(map(str, args)))
    return done.value.code, capsys.readouterr().err


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    work = tmp_path_factory.mktemp("pool")
    return write_jsonl(work / "pool.jsonl", shapes_records(work, 100, seed=2))


def test_a_killed_run_resumes_to_the_weights_of_an_uninterrupted_one(pool, tmp_path, capsys):
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    code, err = vecap_in_process(
        capsys, "train", pool, "-o", whole, *RUN, "--log", f"{whole}.jsonl"
    )
    assert code == 0, err

    args = [sys.executable, "-m", "vecap_cli", "train", str(pool), "-o", str(cut), *RUN]
    log = ["--log", f"{cut}.jsonl", "--log-every", "1"]
    proc = subprocess.Popen([*args, *log], stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:  # 'step 7/24 ...' comes after the checkpoint of step 5
        if line.startswith("vecap train: step 7/"):
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait()
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    killed_at = torch.load(cut / (cut / "latest").read_text().strip(), weights_only=True)["step"]
    assert 5 <= killed_at < 24

    resumed = subprocess.run(
        [*args, *log, "--resume", "latest"], capture_output=True, text=True, timeout=600
    )
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from {cut}/step_{killed_at:08d}.pt" in resumed.stderr

    final = [torch.load(d / "step_00000024.pt", weights_only=True) for d in (whole, cut)]
    for name, weight in final[0]["state_dict"].items():
        assert torch.equal(weight, final[1]["state_dict"][name]), name
    assert torch.equal(final[0]["loss_history"], final[1]["loss_history"])
    assert final[0]["ranks"] == final[1]["ranks"]  # data positions and counts
    logged = [[orjson.loads(x)["loss"] for x in open(f"{d}.jsonl", "rb")] for d in (whole, cut)]
    assert logged[0] == logged[1] and len(logged[0]) == 24


def test_resume_refuses_a_run_with_other_settings(pool, tmp_path, capsys):
    out = tmp_path / "o"
    quick = ["--batch-size", "8", "--train-num-samples", "16", "--workers", "0"]
    assert vecap_in_process(capsys, "train", pool, "-o", out, *quick)[0] == 0
    code, err = vecap_in_process(
        capsys, "train", pool, "-o", out, *quick, "--seed", "9", "--resume", "latest"
    )
    assert code == 1
    assert err.strip().endswith("was trained with --seed 0, not 9")
    assert len(err.strip().splitlines()) == 1
    code, err = vecap_in_process(capsys, "train", pool, "-o", out, *quick)  # no --resume
    assert code == 1 and "holds checkpoints of another run: --resume latest continues it" in err
    code, err = vecap_in_process(
        capsys, "train", pool, "-o", out, *quick, "--positives", "2", "--resume", "latest"
    )
    assert code == 1 and err.strip().endswith("was trained with --positives 1, not 2"), err


def test_preset_sets_the_text_mix_and_refuses_its_own_flags(capsys, tmp_path, pool):
    from vecap_cli.cli.train import _config

    flags = {"inputs": ["x"], "output": "o", "text_keys": None, "text_probs": None, "val": None}
    cfg = _config({**flags, "preset": "recap"}, seed=0)
    assert (cfg.text_keys, cfg.text_probs) == (("alt", "vecap"), (0.2, 0.8))
    assert _config({**flags, "preset": None}, seed=0).text_keys is None
    code, err = vecap_in_process(
        capsys, "train", pool, "-o", tmp_path / "o", "--preset", "veclip", "--text-keys", "alt"
    )
    assert code == 2 and "--preset: sets --text-keys and --text-probs itself" in err, err
    code, err = vecap_in_process(capsys, "train", pool, "-o", tmp_path / "o", "--positives", "0")
    assert code == 2 and "Invalid value for '--positives'" in err, err


@pytest.mark.parametrize(
    ("flags", "code", "says"),
    [
        (["--model", "ViT-B-61"], 1, "--model: unknown architecture 'ViT-B-61' (did you mean"),
        (["--pretrained", "nope.pt"], 1, "--pretrained: cannot read 'nope.pt': no such file"),
        (["--resume", "nope.pt"], 1, "--resume: cannot read 'nope.pt': no such file"),
        (["--batch-size", "1000"], 1, "samples make no global batch of 1,000"),
    ],
)
def test_bad_flags_fail_in_one_line(pool, tmp_path, capsys, flags, code, says):
    got, err = vecap_in_process(capsys, "train", pool, "-o", tmp_path / "o", *flags)
    assert got == code
    lines = err.strip().splitlines()
    assert len(lines) == 1 and says in lines[0], err
    assert lines[0].startswith("vecap train: error: ")


@pytest.mark.parametrize("length", ["0", "100000"])
def test_an_absurd_context_length_is_a_usage_error(pool, tmp_path, capsys, length):
    code, err = vecap_in_process(
        capsys, "train", pool, "-o", tmp_path / "o", "--context-length", length
    )
    text = re.sub(r"[│╭╮╰╯─\s]+", " ", err)  # typer's usage box, unwrapped
    assert code == 2 and "--context-length" in text and "choose from 2 to 4096 tokens" in text
    assert not (tmp_path / "o").exists()


def test_strict_stops_at_the_first_bad_image_in_one_line(tmp_path, capsys):
    records = shapes_records(tmp_path, 12, seed=6)
    records[4]["image"] = "img/missing.png"
    pool = write_jsonl(tmp_path / "p.jsonl", records)
    flags = ["--batch-size", "8", "--workers", "0", "--shuffle-buffer", "1", "--strict", "-q"]
    code, err = vecap_in_process(capsys, "train", pool, "-o", tmp_path / "o", *flags)
    assert code == 1
    assert err.strip() == f"vecap train: error: {pool}:5: image-missing: cannot read " + (
        f"'{tmp_path}/img/missing.png': No such file or directory"
    )


def test_a_checkpoint_of_another_architecture_is_named_in_one_line(tmp_path, capsys, pool):
    bad = tmp_path / "other.pt"
    torch.save({"state_dict": {"visual.proj": torch.zeros(3, 3)}}, bad)
    code, err = vecap_in_process(capsys, "train", pool, "-o", tmp_path / "o", "--pretrained", bad)
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert f"--pretrained '{bad}' does not load into vecap-tiny" in err


def test_a_missing_input_fails_before_torch_loads(tmp_path):
    code = (
        "import sys\nfrom vecap_cli.cli.app import main\n"
        f"try:\n    main(['train', '{tmp_path}/nope.tar', '-o', '{tmp_path}/o'])\n"
        "except SystemExit as e:\n    print(e.code, 'torch' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout.split() == ["1", "False"]
    assert (
        done.stderr.strip()
        == f"vecap train: error: cannot read '{tmp_path}/nope.tar': no such file"
    )


def test_stdin_is_refused_with_the_reason(capsys, tmp_path):
    code, err = vecap_in_process(capsys, "train", "-", "-o", tmp_path / "o")
    text = re.sub(r"[│╭╮╰╯─\s]+", " ", err)  # typer's usage box, unwrapped
    assert code == 2 and "give files, not stdin" in text


def test_help_does_not_import_torch():
    code = (
        "import sys\nfrom vecap_cli.cli.app import main\n"
        "try:\n    main(['train', '--help'])\nexcept SystemExit:\n    pass\n"
        "print('torch' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout.strip().splitlines()[-1] == "False"


def test_every_flag_names_the_config_field_it_sets():
    """The command passes its flags to TrainConfig by name: a flag named otherwise
    would be dropped without a word."""
    import inspect
    from dataclasses import fields

    from vecap_cli.cli.train import train
    from vecap_cli.train.config import TrainConfig

    # --preset is no field: _config turns it into text_keys and text_probs
    own = set(inspect.signature(train.__wrapped__).parameters) - {"opts", "preset"}
    assert own <= {f.name for f in fields(TrainConfig)}
