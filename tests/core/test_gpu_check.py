"""benchmarks/gpu_check.py (`make gpu-check`) without a GPU: the skip line, and every
part of it run on the CPU with tiny sizes, so the script is not first run on a GPU."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "gpu_check.py"


@pytest.fixture
def gpu_check(monkeypatch):
    """The script as a module (its dataclasses need it in sys.modules while it loads)."""
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "gpu_check", module)
    spec.loader.exec_module(module)
    return module


def _run(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", **env},
        timeout=600,
    )


@pytest.mark.timeout(120)
def test_without_cuda_it_says_skipped_and_succeeds(gpu_check):
    proc = _run(CUDA_VISIBLE_DEVICES="")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == gpu_check.SKIP_LINE
    assert proc.stdout.startswith("no CUDA: skipped")


@pytest.mark.timeout(600)
def test_cpu_smoke_prints_one_table_with_every_part():
    proc = _run("--cpu-smoke")
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert all(line.startswith("|") and line.endswith("|") for line in lines), lines
    assert sum(line.startswith("| part |") for line in lines) == 1  # one table
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]
    assert all(len(r) == 8 for r in rows)
    by_part = {part: [r for r in rows if r[0] == part] for part in ("parity", "bench", "train")}
    assert len(by_part["parity"]) == 11 and all(r[4] == "PASS" for r in by_part["parity"])
    assert len(by_part["bench"]) == 6 and all(r[4] == "ok" for r in by_part["bench"])
    assert [r[4] for r in by_part["train"]] == ["ok", "ok"]
    fused, unfused = by_part["train"]
    assert "loss fused, attention fused" in fused[5]
    assert "loss open_clip, attention sdpa" in unfused[5]
    assert all(r[6].endswith("ms") for r in by_part["train"])


def test_a_parity_failure_fails_the_check(gpu_check, monkeypatch, capsys):
    """A kernel 1% off: its rows say FAIL, the others PASS, and the status is 1."""
    from vecap_cli.core import siglip

    real = siglip.TorchKernels.loss_rows
    monkeypatch.setattr(siglip.TorchKernels, "loss_rows", lambda *a: real(*a) * 1.01)
    assert gpu_check.main(["--cpu-smoke", "--skip", "bench,train"]) == 1
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| parity")]
    assert rows and all(("| FAIL |" in r) == ("SigLIP" in r) for r in rows)


def test_a_broken_kernel_is_an_error_row(gpu_check, monkeypatch, capsys):
    from vecap_cli.core import attention

    def broken(*args, **kwargs):
        raise RuntimeError("no kernel image is available for execution on the device")

    monkeypatch.setattr(attention, "_attention_torch", broken)
    assert gpu_check.main(["--cpu-smoke", "--skip", "bench,train"]) == 1
    out = capsys.readouterr().out
    assert "| ERROR | fp32: RuntimeError: no kernel image" in out


def test_unknown_part_is_refused(gpu_check):
    with pytest.raises(SystemExit) as exit_info:
        gpu_check.main(["--skip", "parity,gpu"])
    assert exit_info.value.code == 2
