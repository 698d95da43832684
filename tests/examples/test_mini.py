"""The demo's pipeline end to end, scaled down: `make -C examples/mini` in a temporary folder.

Not the R@1 comparison (`make demo` reports that): here every step runs, leaves
its files, accounts for every record, and reruns alone.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

pytest.importorskip("open_clip")
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")

MINI = REPO / "examples" / "mini"
TINY = {  # a world and runs small enough for CI, every step still real
    "POOL": 160, "SEED_SPLIT": 48, "TEST": 32, "T": 10,
    "COCA_EPOCHS": 1, "COCA_BATCH": 16, "CLIP_EPOCHS": 1, "CLIP_BATCH": 16,
}  # fmt: skip


def make(work: Path, *targets: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    variables = [f"{k}={v}" for k, v in TINY.items()]
    variables += [
        f"WORK={work}",
        f"PYTHON={sys.executable}",
        f"VECAP={sys.executable} -m vecap_cli",
    ]
    return subprocess.run(
        ["make", "--no-print-directory", "-C", str(MINI), *variables, *targets],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    work = tmp_path_factory.mktemp("mini") / "work"
    done = make(work)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return work


def balanced(path: Path) -> dict:
    stats = json.loads(path.read_text())
    lost = sum(stats["dropped"].values()) + sum(stats["rejected"].values())
    assert stats["in"] == stats["out"] + lost, path
    return stats


def test_every_step_leaves_its_files(work):
    for name in (
        "world.json", "pool.jsonl", "metadata.json", "kept.jsonl", "counts.json",
        "vec.jsonl", "vecap.jsonl", "mixed/000000.tar", "runs/coca/open_clip_config.json",
        "runs/alt/open_clip_config.json", "runs/mixed/open_clip_config.json",
        "eval/alt.json", "eval/mixed.json", "compare.txt", "results.md", "results.png",
    ):  # fmt: skip
        assert (work / name).is_file(), name
    table = (work / "compare.txt").read_text()
    assert "text→image R@1" in table and "mini-shape" in table and "mini-colour" in table


def test_every_record_is_accounted_for_from_pool_to_training(work):
    curate = balanced(work / "curate-stats.json")
    assert curate["in"] == TINY["POOL"] and curate["out"] > 0
    caption = balanced(work / "caption-stats.json")
    rewrite = balanced(work / "rewrite-stats.json")
    mix = balanced(work / "mix-stats.json")
    assert caption["in"] == curate["out"] and rewrite["in"] == caption["out"]
    assert mix["in"] == rewrite["out"]
    for run in ("coca", "alt", "mixed"):
        balanced(work / "runs" / f"{run}-stats.json")
    vecap = [json.loads(line) for line in (work / "vecap.jsonl").read_text().splitlines()]
    assert all(r["vec"] and r["vecap"] for r in vecap)


def test_both_clips_train_the_same_steps_on_the_same_samples(work):
    alt, mixed = (
        json.loads((work / "runs" / f"{r}-stats.json").read_text()) for r in ("alt", "mixed")
    )
    assert alt["steps"] == mixed["steps"] > 0
    assert alt["in"] == mixed["in"]


def test_a_step_reruns_alone_from_the_files_before_it(work):
    world = (work / "world.json").stat().st_mtime_ns
    vec = (work / "vec.jsonl").stat().st_mtime_ns
    done = make(work, "caption")
    assert done.returncode == 0, done.stderr[-3000:]
    assert (work / "world.json").stat().st_mtime_ns == world
    assert (work / "vec.jsonl").stat().st_mtime_ns > vec
