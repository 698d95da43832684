"""open_clip's own trainer reads what `vecap mix` writes, with no patch.

The route the README documents: open_clip_train pins webdataset <= 0.2.86 (its
`training` extra); newer webdataset breaks its loader on any shard (open_clip
issue #935), which is why vecap itself does not depend on webdataset.
"""

import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest

from tests.conftest import run_vecap
from tests.train.conftest import shapes_records, write_jsonl

pytest.importorskip("open_clip_train")

REPO = Path(__file__).resolve().parents[2]
TRAIN = """
import sys
import open_clip
open_clip.add_model_config(sys.argv.pop(1))
from open_clip_train.main import main
main(sys.argv[1:])
"""


def _webdataset_version() -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in version("webdataset").split(".")[:3])
    except (PackageNotFoundError, ValueError):
        return ()


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.skipif(
    not _webdataset_version() or _webdataset_version() >= (0, 2, 96),
    reason="open_clip_train needs webdataset <= 0.2.86 (open_clip_torch[training], #935)",
)
def test_open_clip_train_trains_on_mix_shards_as_they_are(tmp_path):
    pool = write_jsonl(tmp_path / "pool.jsonl", shapes_records(tmp_path, 48, seed=3))
    mixed = run_vecap(
        "mix", pool, "--keys", "alt,vecap", "-o", tmp_path / "shards/%06d.tar",
        "--shard-size", "16",
    )  # fmt: skip
    assert mixed.code == 0, mixed.err
    logs = tmp_path / "logs"
    proc = subprocess.run(
        [
            sys.executable, "-c", TRAIN, str(REPO / "vecap_cli/train/model_configs"),
            "--train-data", str(tmp_path / "shards/{000000..000002}.tar"),
            "--dataset-type", "webdataset", "--train-num-samples", "48",
            "--model", "vecap-tiny", "--batch-size", "8", "--epochs", "1", "--workers", "1",
            "--precision", "fp32", "--device", "cpu", "--logs", str(logs), "--name", "run",
            "--report-to", "", "--save-frequency", "1", "--seed", "0",
        ],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (logs / "run/checkpoints/epoch_1.pt").is_file(), proc.stderr[-3000:]
    # 48 samples at batch 8 on one worker: six steps, each on our images and captions
    assert "Train Epoch: 0 [48/48" in proc.stderr + proc.stdout, proc.stderr[-3000:]
