"""Dispatch, the VECAP_KERNELS switch, and what importing the core costs."""

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


# -- the CUDA side of dispatch, without a GPU (conftest's `fake_cuda`) -----------------


@pytest.mark.skipif(not triton_available(), reason="triton is not installed")
def test_cuda_tensors_run_triton(fake_cuda):
    x = fake_cuda(4, 8)
    assert x.is_cuda
    assert choose_backend(x) == "triton"
    from vecap_cli.core import siglip

    assert clip._kernels(x, None).__name__ == "vecap_cli.core.clip_triton"
    assert siglip._kernels(x, None).__name__ == "vecap_cli.core.siglip_triton"


def test_cuda_tensors_without_triton_run_torch(fake_cuda, monkeypatch):
    """A CUDA machine where Triton is missing: the tiled torch path, not an error."""
    from vecap_cli.core import dispatch, siglip

    monkeypatch.setattr(dispatch, "triton_available", lambda: False)
    x = fake_cuda(4, 8)
    assert choose_backend(x) == "torch"
    assert isinstance(siglip._kernels(x, None, 3), siglip.TorchKernels)
    assert clip._kernels(x, None) is clip.TorchKernels
    with pytest.raises(RuntimeError, match="triton is not installed"):
        choose_backend(x, backend="triton")


def test_switch_forces_torch_on_cuda(fake_cuda, monkeypatch):
    monkeypatch.setenv(ENV_VAR, "torch")
    assert choose_backend(fake_cuda(2, 2)) == "torch"
    monkeypatch.setenv(ENV_VAR, "auto")
    assert choose_backend(fake_cuda(2, 2)) == ("triton" if triton_available() else "torch")


@pytest.mark.skipif(not triton_available(), reason="triton is not installed")
def test_auto_routes_cuda_ops_to_the_triton_launchers(fake_cuda, monkeypatch):
    """Every op, given CUDA tensors and no backend, calls its Triton launcher."""
    from vecap_cli.core import attention, attention_triton, clip_triton, siglip, siglip_triton

    called = []

    def stub(name, make):
        def launcher(*args, **kwargs):
            called.append(name)
            return make(*args, **kwargs)

        return launcher

    monkeypatch.setattr(
        siglip_triton, "loss_rows", stub("siglip", lambda x, *a: x.new_zeros(x.shape[0]))
    )
    monkeypatch.setattr(
        clip_triton,
        "lse",
        stub("clip", lambda x, y, s, cols: (x.new_zeros(x.shape[0]), y.new_zeros(y.shape[0]))),
    )
    monkeypatch.setattr(
        attention_triton,
        "forward",
        stub("attention", lambda q, *a: (torch.zeros_like(q), q.new_zeros(q.shape[:3]))),
    )
    x, q = fake_cuda(6, 8), fake_cuda(1, 2, 5, 16, dtype=torch.bfloat16)
    siglip.siglip_loss(x, x, 10.0, -10.0)
    clip.clip_loss(x, x, 10.0)
    attention.flash_attention(q, q, q, causal=True)
    assert called == ["siglip", "clip", "attention"]


def test_torch_path_runs_on_cuda_tensors(fake_cuda):
    """Forced to torch, the ops keep CUDA tensors on CUDA: no hidden CPU tensor."""
    from vecap_cli.core import FusedSigLipLoss, flash_attention, siglip_loss

    x = fake_cuda(6, 8)
    loss = siglip_loss(x, x, 10.0, -1.0, backend="torch", chunk_size=4)
    loss = loss + clip.clip_loss(x, x, 10.0, backend="torch")
    loss = loss + FusedSigLipLoss(chunk_size=2, backend="torch")._loss(
        x, x[:3], 10.0, None, negative_only=True
    )
    assert loss.device.type == "cuda" and loss.dtype == torch.float32
    q = fake_cuda(1, 2, 5, 16, dtype=torch.bfloat16)
    mask = torch.zeros(1, 5, dtype=torch.bool, device="cuda")
    out = flash_attention(q, q, q, causal=True, key_padding_mask=mask, backend="torch")
    assert out.device.type == "cuda" and out.dtype == torch.bfloat16
