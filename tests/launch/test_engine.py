"""The engine registry and the steps a launch runs: an engine is one class and its
registration, which the CLI offers with the options it takes."""

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
import typer
from typer.testing import CliRunner

from tests.conftest import make_records, write_jsonl
from vecap_cli.cli.app import app
from vecap_cli.launch.engine import ENGINES, Engine, engine
from vecap_cli.launch.step import STEPS


@dataclass(frozen=True)
class Inline(Engine):
    """Runs the tasks one after the other, here, and marks them as the script would:
    the shape of an engine that runs tasks from Python (Ray)."""

    cpus_per_task: int | None = None

    def start(self, run):
        for task in run.tasks:
            rank = ["--rank", str(task), "--world-size", str(run.launch.tasks)]
            if subprocess.run([*run.argv(), *rank], cwd=run.launch.cwd).returncode == 0:
                Path(run.state.done_dir, str(task)).touch()
        run.log(f"ran tasks {list(run.tasks)}")


@pytest.fixture
def inline():
    # The launch command is loaded when first named: load it before registering, or
    # its help (and so its man page, for every later test) would list "inline".
    import vecap_cli.cli.launch  # noqa: F401

    engine("inline", help="one task after the other, here")(Inline)
    yield
    del ENGINES["inline"]


def test_a_registered_engine_is_a_choice_that_runs_and_merges(inline, tmp_path):
    """Registered after the CLI loaded, so a choice but not in its help (an engine
    module that `vecap_cli.launch` imports is in both)."""
    runner = CliRunner()
    write_jsonl(tmp_path / "in.jsonl", make_records(50))
    state = str(tmp_path / "state")
    step = ["mix", str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "out" / "%d.jsonl")]
    stats = ["--stats", str(tmp_path / "stats.json")]
    launch = ["launch", "--engine", "inline", "--tasks", "3", "--state", state]
    result = runner.invoke(app, [*launch, "--cpus-per-task", "2", "--", *step, *stats])
    assert result.exit_code == 0, result.output
    assert "ran tasks [0, 1, 2]" in result.output
    assert runner.invoke(app, ["launch", "--merge", state]).exit_code == 0
    assert orjson.loads((tmp_path / "stats.json").read_bytes())["out"] == 50

    refused = runner.invoke(app, [*launch, "--partition", "gpu", "--", *step])
    assert refused.exit_code == 2
    assert "--partition: the inline engine does not take it" in refused.output


def test_every_step_splits_by_rank_and_resumes_when_it_writes_shards():
    root = typer.main.get_command(app)
    for name, shards in STEPS.items():
        command = root
        for part in name.split():
            command = command.get_command(None, part)
        flags = {param.name for param in command.params}
        assert {"inputs", "output", "rank", "world_size"} <= flags, name
        assert ("resume" in flags) == shards, name


def test_launching_a_gpu_step_imports_no_torch(tmp_path):
    argv = [
        "launch", "--engine", "slurm", "--tasks", "2", "--dry-run", "--state", str(tmp_path),
        "--", "caption", "in.jsonl", "--model", "./llava", "-o", "out/%06d.tar",
    ]  # fmt: skip
    code = (
        "import sys\n"
        "from vecap_cli.cli.app import main\n"
        f"try:\n    main({argv!r})\nexcept SystemExit as stop:\n    assert not stop.code\n"
        "print(sorted(m for m in ('torch', 'numpy', 'transformers', 'httpx') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip().splitlines()[-1] == "[]"
