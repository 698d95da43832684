"""test_distill's two gloo ranks: a spawned process imports this module alone, not the
test module (whose open_clip import costs ~20 s per process on a 2-core machine)."""

import socket

import torch
import torch.distributed as dist
import torch.nn.functional as F

from tests.core.conftest import leaves
from vecap_cli.core.distill import FusedDistillClipLoss

WORLD, B, D, DT = 2, 9, 16, 12


def features(b: int, d: int, dt: int, seed: int = 0):
    """Student images, texts (B, D) and teacher images, texts (B, Dt), unit rows: texts
    noisy copies of their images, the teacher's pairs tighter than the student's, so
    the two softmaxes differ and neither is one-hot."""
    gen = torch.Generator().manual_seed(seed)

    def unit(n, d):
        return F.normalize(torch.randn(n, d, generator=gen, dtype=torch.float64), dim=-1)

    image, teacher_image = unit(b, d), unit(b, dt)
    text = F.normalize(image + 1.5 * unit(b, d), dim=-1)
    teacher_text = F.normalize(teacher_image + 1.0 * unit(b, dt), dim=-1)
    return image, text, teacher_image, teacher_text


def _rank_step(rank: int, backend: str) -> dict:
    feats = features(WORLD * B, D, DT, seed=5)
    mine = slice(rank * B, (rank + 1) * B)
    image, text = leaves(feats[0][mine], feats[1][mine], dtype=torch.float32)
    s = torch.tensor(10.0, requires_grad=True)
    loss_fn = FusedDistillClipLoss(
        local_loss=True, gather_with_grad=True, rank=rank, world_size=WORLD, backend=backend
    )
    _, loss = loss_fn(image, text, s, feats[2][mine].float(), feats[3][mine].float(), 20.0)
    loss.backward()
    out = {"loss": loss, "image": image.grad, "text": text.grad, "scale": s.grad}
    return {k: v.detach().double() for k, v in out.items()}


def worker(rank: int, port: int, out_dir: str, backends: list[str]) -> None:
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD
    )
    try:
        results = {backend: _rank_step(rank, backend) for backend in backends}
        torch.save(results, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
