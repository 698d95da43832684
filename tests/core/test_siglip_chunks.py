"""open_clip's newer SigLipLoss tests (chunk_size, negative_only), pointed at FusedSigLipLoss.

open_clip's own tests are not installed; these are their equivalents. The oracle is
the installed open_clip SigLipLoss in fp64 (its `_loss` has `negative_only`), or the
plain B×B formula where open_clip 3.3 cannot go (rectangular blocks).
"""

import inspect

import pytest
import torch
import torch.nn.functional as F
from open_clip.loss import SigLipLoss

from tests.core.conftest import BACKENDS, LOSS_TOL, assert_near, leaves
from vecap_cli.core.siglip import FusedSigLipLoss, siglip_loss_reference

F32 = torch.float32
TOL = LOSS_TOL[F32]


def _inputs(b=64, d=32, seed=0, dtype=torch.float64):
    """open_clip's test inputs: unit rows, SigLIP's initial scale 10 and bias −10."""
    gen = torch.Generator().manual_seed(seed)
    image = F.normalize(torch.randn(b, d, generator=gen, dtype=torch.float64), dim=-1)
    text = F.normalize(torch.randn(b, d, generator=gen, dtype=torch.float64), dim=-1)
    scale, bias = torch.tensor(10.0, dtype=torch.float64), torch.tensor(-10.0, dtype=torch.float64)
    return [t.to(dtype) for t in (image, text, scale, bias)]


def _grads(loss, inputs):
    wanted = [t for t in inputs if t.requires_grad]
    return torch.autograd.grad(loss, wanted)


def _compare(ours, theirs, dtype=F32, what=""):
    for i, (got, want) in enumerate(zip(ours, theirs, strict=True)):
        assert_near(got, want, LOSS_TOL[dtype], dtype, f"{what} #{i}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("chunk_size", [64, 32, 8, 1])
@pytest.mark.parametrize("negative_only", [False, True])
def test_chunked_forward_and_backward_match_open_clip(backend, chunk_size, negative_only):
    base = _inputs(b=64)
    ours_in = leaves(*base, dtype=F32)
    theirs_in = leaves(*base)
    ours = FusedSigLipLoss(chunk_size=chunk_size, backend=backend)._loss(
        *ours_in, negative_only=negative_only
    )
    theirs = SigLipLoss()._loss(*theirs_in, negative_only=negative_only)
    assert ours.dtype == F32
    assert_near(ours, theirs, TOL, F32, "loss")
    _compare(_grads(ours, ours_in), _grads(theirs, theirs_in), what="grad")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("negative_only", [False, True])
def test_uneven_last_chunk(backend, negative_only):
    """70 = 8·8 + 6: the last chunk has 6 rows."""
    base = _inputs(b=70)
    ours_in, theirs_in = leaves(*base, dtype=F32), leaves(*base)
    loss_fn = FusedSigLipLoss(chunk_size=8, backend=backend)
    ours = loss_fn._loss(*ours_in, negative_only=negative_only)
    theirs = SigLipLoss()._loss(*theirs_in, negative_only=negative_only)
    assert_near(ours, theirs, TOL, F32, "loss")
    _compare(_grads(ours, ours_in), _grads(theirs, theirs_in), what="grad")
    # and through forward, the form training calls
    ours_in, theirs_in = leaves(*base, dtype=F32), leaves(*base)
    ours, theirs = loss_fn(*ours_in), SigLipLoss()(*theirs_in)
    assert_near(ours, theirs, TOL, F32, "forward loss")
    _compare(_grads(ours, ours_in), _grads(theirs, theirs_in), what="forward grad")


def test_chunk_size_zero_is_the_default():
    image, text, scale, bias = _inputs(b=32, dtype=F32)
    default = FusedSigLipLoss()._loss(image, text, scale, bias)
    assert torch.equal(default, FusedSigLipLoss(chunk_size=0)._loss(image, text, scale, bias))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("m", "n"), [(19, 19), (19, 11), (11, 19)])
@pytest.mark.parametrize("chunk_size", [1, 7, 32])
@pytest.mark.parametrize("negative_only", [False, True])
@pytest.mark.parametrize(
    "trainable",
    [(True, True, True, True), (False, True, True, True), (False, False, True, True)],
    ids=["all", "frozen-image", "frozen-towers"],
)
def test_all_gradients_rectangular_and_frozen(backend, m, n, chunk_size, negative_only, trainable):
    """Chunk offsets, blocks of unequal sides and frozen towers keep every gradient."""
    image, text, scale, bias = _inputs(b=max(m, n))
    base = (image[:m], text[:n], scale, bias)
    ours_in = [t.to(F32).clone().requires_grad_(on) for t, on in zip(base, trainable, strict=True)]
    ref_in = [t.clone().requires_grad_(on) for t, on in zip(base, trainable, strict=True)]
    ours = FusedSigLipLoss(chunk_size=chunk_size, backend=backend)._loss(
        *ours_in, negative_only=negative_only
    )
    ref = siglip_loss_reference(*ref_in, negative_only=negative_only)
    assert_near(ours, ref, TOL, F32, "loss")
    _compare(_grads(ours, ours_in), _grads(ref, ref_in), what="grad")


@pytest.mark.parametrize("backend", BACKENDS)
def test_negative_blocks_compose_open_clips_distributed_loss(backend):
    """open_clip's multi-rank form, one block per rank: the own block with positives,
    every other rank's texts negative-only. Summed, it is the loss against all texts."""
    image, text, scale, bias = _inputs(b=36, d=16, seed=4)
    ranks = 3
    blocks = [text[r * 12 : (r + 1) * 12] for r in range(ranks)]
    mine = image[12:24]  # rank 1

    def total(loss, rows, cols, s, b):
        out = loss._loss(rows, cols[1], s, b)
        for r in (0, 2):
            out = out + loss._loss(rows, cols[r], s, b, negative_only=True)
        return out

    ours_in = leaves(mine, *blocks, scale, bias, dtype=F32)
    theirs_in = leaves(mine, *blocks, scale, bias)
    ours = total(
        FusedSigLipLoss(chunk_size=5, backend=backend), ours_in[0], ours_in[1:4], *ours_in[4:]
    )
    theirs = total(SigLipLoss(), theirs_in[0], theirs_in[1:4], *theirs_in[4:])
    assert_near(ours, theirs, TOL, F32, "loss")
    _compare(_grads(ours, ours_in), _grads(theirs, theirs_in), what="grad")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("with_bias", [False, True])
def test_autocast_and_optional_bias(backend, with_bias):
    """Under bf16 autocast the loss still runs in fp32; the bias may be left out."""
    image, text, scale, bias = _inputs(b=35)
    base = [image, text, scale] + ([bias] if with_bias else [])
    ours_in = leaves(*base, dtype=F32)
    ref_in = leaves(*base)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = FusedSigLipLoss(chunk_size=8, backend=backend)._loss(*ours_in)
    ref = SigLipLoss()._loss(*ref_in)
    assert ours.dtype == F32
    assert_near(ours, ref, TOL, F32, "loss")
    _compare(_grads(ours, ours_in), _grads(ref, ref_in), what="grad")


@pytest.mark.parametrize("requires_grad", [False, True])
def test_no_grad_gives_the_same_outputs(requires_grad):
    inputs = [t.to(F32).requires_grad_(requires_grad) for t in _inputs(b=19)]
    with torch.no_grad():
        got = FusedSigLipLoss(chunk_size=7)(*inputs, output_dict=True)["contrastive_loss"]
        want = SigLipLoss()(*[t.double() for t in inputs])
    assert not got.requires_grad
    assert_near(got, want, TOL, F32, "loss")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("chunk_size", [0, 16])
def test_large_low_precision_reduction_is_finite(backend, chunk_size):
    """fp16 inputs whose B×B sum would overflow fp16: the fp32 loss stays finite and right."""
    image, text = torch.zeros(256, 4, dtype=torch.float16), torch.zeros(256, 4, dtype=torch.float16)
    scale, bias = torch.ones((), dtype=torch.float16), torch.full((), 10.0, dtype=torch.float16)
    loss = FusedSigLipLoss(chunk_size=chunk_size, backend=backend)._loss(image, text, scale, bias)
    ref = SigLipLoss()._loss(image.double(), text.double(), scale.double(), bias.double())
    assert loss.dtype == F32 and torch.isfinite(loss)
    assert_near(loss, ref, LOSS_TOL[torch.float16], torch.float16, "loss")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_gradients_match(backend, dtype):
    gen = torch.Generator().manual_seed(17)
    base = [torch.randn(96, 8, generator=gen, dtype=torch.float64) for _ in range(2)]
    base += [torch.tensor(10.0, dtype=torch.float64), torch.tensor(10.0, dtype=torch.float64)]
    ours_in = leaves(*[t.to(dtype) for t in base])
    ref_in = leaves(*[t.to(dtype).double() for t in base])
    ours = FusedSigLipLoss(chunk_size=8, backend=backend)._loss(*ours_in)
    ref = SigLipLoss()._loss(*ref_in)
    assert torch.isfinite(ours) and all(torch.isfinite(g).all() for g in _grads(ours, ours_in))
    ours_in = leaves(*[t.to(dtype) for t in base])
    ours = FusedSigLipLoss(chunk_size=8, backend=backend)._loss(*ours_in)
    assert_near(ours, ref, LOSS_TOL[dtype], dtype, "loss")
    _compare(_grads(ours, ours_in), _grads(ref, ref_in), dtype, "grad")


def test_backward_saves_no_pairwise_matrix():
    """What autograd keeps between forward and backward is O(B·D), not chunk × B per chunk."""
    b, d, chunk = 256, 16, 16
    inputs = leaves(*_inputs(b=b, d=d, dtype=F32))
    input_storage = {t.untyped_storage().data_ptr() for t in inputs}
    saved = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in input_storage:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = FusedSigLipLoss(chunk_size=chunk)._loss(*inputs)
    budget = 2 * (b * d + chunk * b) * inputs[0].element_size()
    assert sum(saved.values()) <= budget
    assert all(torch.isfinite(g).all() for g in torch.autograd.grad(loss, inputs))


def test_interface_is_open_clips_plus_chunk_size():
    init = inspect.signature(FusedSigLipLoss.__init__).parameters
    assert list(init)[:6] == [
        "self",
        "cache_labels",
        "rank",
        "world_size",
        "dist_impl",
        "chunk_size",
    ]
    assert init["chunk_size"].default == 0
    ours = inspect.signature(FusedSigLipLoss._loss).parameters
    theirs = inspect.signature(SigLipLoss._loss).parameters
    assert list(ours) == list(theirs)
    assert {k: v.default for k, v in ours.items()} == {k: v.default for k, v in theirs.items()}


@pytest.mark.parametrize("chunk_size", [-1, None])
def test_bad_chunk_size_is_refused(chunk_size):
    with pytest.raises(ValueError, match="chunk_size"):
        FusedSigLipLoss(chunk_size=chunk_size)
