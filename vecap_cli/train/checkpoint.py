"""Checkpoints that open_clip loads as they are, and that carry what a resume needs.

A checkpoint `OUT/step_00001000.pt` is one dict, loadable with weights_only=True:

    state_dict      the model: what open_clip's `load_checkpoint` reads, so
                    `create_model_and_transforms(arch, pretrained=path)` works
    optimizer, scaler, step, epoch, epoch_step, loss_history, rng
    ranks           per rank: data positions, counts, --rejects offset
    config, model, steps_per_epoch, world_size

Files are written as NAME.tmp and renamed, then `OUT/latest` (one line naming
the file) the same way: whatever is killed when, `latest` names a whole file.
At the end, `open_clip_config.json` and `open_clip_pytorch_model.bin` (weights
only) make OUT a directory open_clip loads as `local-dir:OUT` with no vecap
registration at all.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch

from vecap_cli.errors import VecapError
from vecap_cli.loading import load_error, quietly

LATEST = "latest"
_STEP_FILE = re.compile(r"^step_(\d{8,})\.pt$")


def step_path(out: str, step: int) -> Path:
    return Path(out) / f"step_{step:08d}.pt"


def _atomic(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise VecapError(f"cannot write '{path}': {err.strerror or err}") from None


def save(out: str, step: int, payload: dict, keep: int = 0) -> Path:
    """Write the checkpoint of `step`, point `latest` at it, prune to the newest `keep`."""
    path = step_path(out, step)
    _atomic(path, lambda tmp: torch.save(payload, tmp))
    _atomic(Path(out) / LATEST, lambda tmp: tmp.write_text(path.name + "\n"))
    if keep > 0:
        for old in checkpoints(out)[:-keep]:
            old.unlink(missing_ok=True)
    return path


def checkpoints(out: str) -> list[Path]:
    """The step checkpoints in `out`, oldest first."""
    if not os.path.isdir(out):
        return []
    return sorted(p for p in Path(out).iterdir() if _STEP_FILE.match(p.name))


def latest(out: str) -> Path | None:
    pointer = Path(out) / LATEST
    if not pointer.is_file():
        return None
    path = Path(out) / pointer.read_text().strip()
    return path if path.is_file() else None


def resolve_resume(spec: str | None, out: str) -> Path | None:
    """--resume latest (None when OUT has no checkpoint yet: a fresh start) or a path."""
    if spec is None:
        return None
    if spec == LATEST:
        return latest(out)
    if not os.path.isfile(spec):
        raise VecapError(f"--resume: cannot read '{spec}': no such file")
    return Path(spec)


def load(path: Path) -> dict:
    try:
        with quietly():
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a damaged or foreign file: whatever torch raises is one line
        raise load_error(f"--resume: cannot load '{path}'", err) from None
    if not isinstance(payload, dict) or "state_dict" not in payload or "step" not in payload:
        raise VecapError(f"--resume: '{path}' is not a vecap train checkpoint")
    return payload


def export(out: str, state_dict: dict, model_cfg: dict | None, preprocess_cfg: dict) -> None:
    """OUT as an open_clip `local-dir:` model: config plus weights."""
    out_path = Path(out)
    _atomic(out_path / "open_clip_pytorch_model.bin", lambda tmp: torch.save(state_dict, tmp))
    if model_cfg is not None:
        config = {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}
        _atomic(
            out_path / "open_clip_config.json",
            lambda tmp: tmp.write_text(json.dumps(config, indent=2) + "\n"),
        )
