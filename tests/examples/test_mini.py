"""The demo's pipeline end to end, scaled down: `make -C examples/mini` in a temporary folder.

Not the R@1 comparison (`make demo` reports that): here every step runs, leaves
its files, accounts for every record, and reruns alone; every row of the table
(AltText + VeC, K sampled VeCs, multi-positive, the teacher and its distilled
student) trains on the steps and seed of the two CLIPs it is compared with.
"""

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.conftest import REPO

pytest.importorskip("open_clip")
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")

MINI = REPO / "examples" / "mini"
CLIPS = ("alt", "mixed", "vec", "vec-k", "pos", "distill", "teacher")  # the table's runs
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
        "vec-k.jsonl", "mixed-k/000000.tar", "reinforced/000000.tar",
        "compare.txt", "results.md", "results.png",
        *(f"runs/{run}/open_clip_config.json" for run in CLIPS),
        *(f"eval/{run}.json" for run in CLIPS),
    ):  # fmt: skip
        assert (work / name).is_file(), name
    table = (work / "compare.txt").read_text()
    assert "text→image R@1" in table and "mini-shape" in table and "mini-colour" in table
    assert all(run in table for run in CLIPS)
    for run in CLIPS:  # each column holds the three held-out tasks
        results = json.loads((work / "eval" / f"{run}.json").read_text())
        assert [r["dataset"] for r in results] == ["mini-test", "mini-shape", "mini-colour"]
    report = (work / "results.md").read_text()
    assert "## Which ideas pay" in report and "Not run: **conditioned captions" in report


def test_every_record_is_accounted_for_from_pool_to_training(work):
    curate = balanced(work / "curate-stats.json")
    assert curate["in"] == TINY["POOL"] and curate["out"] > 0
    caption = balanced(work / "caption-stats.json")
    rewrite = balanced(work / "rewrite-stats.json")
    mix = balanced(work / "mix-stats.json")
    assert caption["in"] == curate["out"] and rewrite["in"] == caption["out"]
    assert mix["in"] == rewrite["out"]
    for run in ("coca", *CLIPS):
        balanced(work / "runs" / f"{run}-stats.json")
    vecap = [json.loads(line) for line in (work / "vecap.jsonl").read_text().splitlines()]
    assert all(r["vec"] and r["vecap"] for r in vecap)


def test_the_sampled_captions_are_lists_of_at_most_k_and_every_draw_is_counted(work):
    curate = balanced(work / "curate-stats.json")
    caption = balanced(work / "caption-k-stats.json")
    assert caption["in"] == curate["out"]
    records = [json.loads(line) for line in (work / "vec-k.jsonl").read_text().splitlines()]
    assert len(records) == caption["out"] > 0
    assert all(isinstance(r["vec"], list) and 1 <= len(r["vec"]) <= 4 for r in records)
    draws = caption["caption-draws"]  # kept or refused: K draws of every record read
    assert sum(draws.values()) == 4 * caption["in"]
    assert draws["kept"] == sum(len(r["vec"]) for r in records)
    assert balanced(work / "mix-k-stats.json")["in"] == caption["out"]


def test_the_teacher_embeds_the_mixed_shards_record_for_record(work):
    embed = balanced(work / "embed-stats.json")
    assert embed["in"] == embed["out"] == balanced(work / "mix-stats.json")["out"]

    def members(folder: str) -> list[list[str]]:
        names = []
        for path in sorted((work / folder).glob("*.tar")):
            with tarfile.open(path) as tar:
                names.append(tar.getnames())
        return names

    mixed, reinforced = members("mixed"), members("reinforced")
    # the same records in the same shards and order: training without --distill on
    # them is the mixed run, so that run is the distilled one's baseline
    assert [[n for n in names if ".teacher." not in n] for names in reinforced] == mixed
    keys = [n.removesuffix(".json") for names in mixed for n in names if n.endswith(".json")]
    teacher = {n for names in reinforced for n in names if ".teacher." in n}
    for key in keys:
        assert {f"{key}.teacher.{f}.npy" for f in ("img", "alt", "vecap")} <= teacher


def test_every_row_trains_the_same_steps_on_the_same_samples(work):
    stats = {run: json.loads((work / "runs" / f"{run}-stats.json").read_text()) for run in CLIPS}
    rows = ("alt", "mixed", "vec", "pos", "distill")  # the same shards' records
    assert len({stats[run]["steps"] for run in rows}) == 1 and stats["alt"]["steps"] > 0
    assert len({stats[run]["in"] for run in rows}) == 1
    assert stats["pos"]["positives"] == 2
    # vec-k reads the records its sampled captions kept: the same epochs and batch
    assert stats["vec-k"]["epochs"] == stats["mixed"]["epochs"] and stats["vec-k"]["steps"] > 0
    assert stats["teacher"]["epochs"] == 3 * stats["mixed"]["epochs"]
    assert stats["teacher"]["steps"] == 3 * stats["mixed"]["steps"]


def test_a_step_reruns_alone_from_the_files_before_it(work):
    world = (work / "world.json").stat().st_mtime_ns
    vec = (work / "vec.jsonl").stat().st_mtime_ns
    done = make(work, "caption")
    assert done.returncode == 0, done.stderr[-3000:]
    assert (work / "world.json").stat().st_mtime_ns == world
    assert (work / "vec.jsonl").stat().st_mtime_ns > vec
