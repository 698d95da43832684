"""Dispatch, the VECAP_KERNELS switch, and what importing the core costs."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import vecap_cli.core
from vecap_cli.core import clip
from vecap_cli.core.dispatch import ENV_VAR, choose_backend, triton_available

CORE = Path(vecap_cli.core.__file__).parent
REPO = CORE.parents[1]


def test_cpu_tensors_run_torch():
    assert choose_backend(torch.zeros(1)) == "torch"


@pytest.mark.skipif(not triton_available(), reason="triton is not installed")
def test_switch_is_read_at_call_time(monkeypatch):
    x = torch.zeros(1)
    monkeypatch.setenv(ENV_VAR, "triton")
    assert choose_backend(x) == "triton"
    monkeypatch.setenv(ENV_VAR, "torch")
    assert choose_backend(x) == "torch"
    assert choose_backend(x, backend="triton") == "triton"  # the argument wins


@pytest.mark.skipif(not triton_available(), reason="triton is not installed")
def test_switch_routes_the_ops(monkeypatch):
    seen = []
    real = clip._kernels
    monkeypatch.setattr(clip, "_kernels", lambda x, b: seen.append(real(x, b)) or seen[-1])
    image, text = torch.randn(5, 16), torch.randn(5, 16)
    for choice in ("triton", "torch"):
        monkeypatch.setenv(ENV_VAR, choice)
        clip.clip_loss(image, text, 10.0)
    assert seen[0].__name__ == "vecap_cli.core.clip_triton" and seen[1] is clip.TorchKernels


def test_bad_switch_is_refused(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "cuda")
    with pytest.raises(ValueError, match=ENV_VAR):
        choose_backend(torch.zeros(1))


def test_public_api_resolves():
    for name in vecap_cli.core.__all__:
        assert getattr(vecap_cli.core, name) is not None
    with pytest.raises(AttributeError):
        vecap_cli.core.nope  # noqa: B018


def _python(code: str) -> None:
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=120)


def test_import_is_light():
    _python(
        "import sys, vecap_cli.core;"
        "heavy = {'triton', 'open_clip'} & set(sys.modules);"
        "assert not heavy, heavy"
    )


def test_torch_path_works_without_triton():
    """As on macOS: `import triton` fails, the CPU losses and attention still run."""
    _python(
        "import sys; sys.modules['triton'] = None\n"
        "import torch\n"
        "from vecap_cli.core import clip_loss, siglip_loss, flash_attention, FusedClipLoss\n"
        "x = torch.randn(6, 8, requires_grad=True)\n"
        "(clip_loss(x, x, 10.0) + siglip_loss(x, x, 10.0, -1.0) + FusedClipLoss()(x, x, 10.0)).backward()\n"
        "q = torch.randn(1, 2, 5, 8)\n"
        "flash_attention(q, q, q, causal=True)\n"
    )


def test_core_imports_only_downwards():
    """The core never imports the CLI or the stream layer."""
    for path in CORE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            for name in names:
                assert not name.startswith(("vecap_cli.cli", "vecap_cli.stream")), (path.name, name)
