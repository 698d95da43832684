"""examples/launch's vecap launch scripts, dry-run, their tasks run as the Slurm
tests run them: the curate launches keep what one `vecap curate` keeps."""

import os
import subprocess
import sys

import orjson
import pytest

from tests.cli.test_curate import METADATA, make_pool
from tests.conftest import REPO, run_vecap, write_jsonl
from tests.launch.test_slurm import run_task
from vecap_cli.stream.runner import iter_samples
from vecap_cli.stream.tally import Tally

EXAMPLES = REPO / "examples" / "launch"


def run_example(tmp_path, name, *args, **env):
    """The example under bash, its `vecap` this checkout's, with DRY_RUN=1."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    vecap = bin_dir / "vecap"
    vecap.write_text(f'#!/bin/sh\nexec {sys.executable} -m vecap_cli "$@"\n')
    vecap.chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "DRY_RUN": "1",
        **env,
    }
    return subprocess.run(
        ["bash", EXAMPLES / name, *args], cwd=tmp_path, env=env, capture_output=True, text=True
    )


def test_the_curate_launches_keep_what_one_curate_keeps(tmp_path):
    write_jsonl(tmp_path / "pool.jsonl", make_pool(1500))
    (tmp_path / "meta.json").write_bytes(orjson.dumps(METADATA))
    args = ("pool.jsonl", "work", "meta.json", "--field", "alt")
    for phase in ("count", "balance"):
        done = run_example(tmp_path, "launch_curate.sh", phase, *args, TASKS="2", T="150")
        assert done.returncode == 0, done.stderr
        state = tmp_path / "work" / ("counts" if phase == "count" else "kept") / ".vecap-launch"
        for task in (0, 1):
            assert run_task(state, task).returncode == 0
    one = run_vecap("curate", "pool.jsonl", "--metadata", "meta.json", "--t", "150", cwd=tmp_path)
    assert one.code == 0, one.err
    shards = [str(p) for p in (tmp_path / "work" / "kept").glob("*.tar")]
    kept = sorted(sample.key for sample in iter_samples(shards, Tally("read")))
    assert kept == sorted(r["key"] for r in one.records())


def test_the_caption_launch_writes_its_array(tmp_path):
    done = run_example(
        tmp_path, "launch_caption.sh", "pool/{0..9}.tar", "vec", "./llava", TASKS="8"
    )
    assert done.returncode == 0, done.stderr
    script = (tmp_path / "vec" / ".vecap-launch" / "tasks.sbatch").read_text()
    assert "#SBATCH --array=0-7\n#SBATCH --ntasks=1\n" in script
    assert "#SBATCH --gpus-per-task=1\n" in script
    assert " caption 'pool/{0..9}.tar' --model ./llava -o vec/%06d.tar " in script


def test_the_ray_caption_launch_prints_its_tasks(tmp_path):
    pytest.importorskip("ray")
    done = run_example(
        tmp_path, "launch_caption_ray.sh", "pool/{0..9}.tar", "vec", "./llava", TASKS="8"
    )
    assert done.returncode == 0, done.stderr
    tasks = done.stdout.splitlines()
    assert len(tasks) == 8
    assert " caption 'pool/{0..9}.tar' --model ./llava -o vec/%06d.tar " in tasks[7]
    assert tasks[7].endswith(
        f" --resume --rank 7 --world-size 8 >> {tmp_path}/vec/.vecap-launch/logs/task-7.log 2>&1"
    )
    assert "on a Ray started for this launch: actors of 8 CPU, 1 GPU each" in done.stderr
