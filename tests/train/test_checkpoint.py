"""Checkpoint files: `latest` always names a whole file; old ones are pruned on request."""

import torch

from vecap_cli.train import checkpoint


def test_latest_names_the_newest_whole_file_and_keep_prunes(tmp_path):
    for step in (5, 10, 15):
        checkpoint.save(str(tmp_path), step, {"state_dict": {}, "step": step}, keep=2)
    assert [p.name for p in checkpoint.checkpoints(str(tmp_path))] == [
        "step_00000010.pt",
        "step_00000015.pt",
    ]
    assert checkpoint.latest(str(tmp_path)).name == "step_00000015.pt"
    assert checkpoint.load(checkpoint.latest(str(tmp_path)))["step"] == 15
    assert not list(tmp_path.glob("*.tmp"))


def test_a_save_cut_short_leaves_latest_on_the_previous_file(tmp_path, monkeypatch):
    checkpoint.save(str(tmp_path), 5, {"state_dict": {}, "step": 5})

    def crash(obj, path):
        with open(path, "wb") as f:
            f.write(b"half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", crash)
    try:
        checkpoint.save(str(tmp_path), 10, {"state_dict": {}, "step": 10})
    except Exception as err:
        assert "No space left on device" in str(err)
    assert checkpoint.latest(str(tmp_path)).name == "step_00000005.pt"
    assert not (tmp_path / "step_00000010.pt").exists()
    assert not list(tmp_path.glob("*.tmp"))


def test_resume_latest_without_a_checkpoint_is_a_fresh_start(tmp_path):
    assert checkpoint.resolve_resume("latest", str(tmp_path / "none")) is None
    assert checkpoint.resolve_resume(None, str(tmp_path)) is None
