"""MobileCLIP's distillation loss, tile by tile: neither B×B similarity matrix ever exists.

The loss (Vasu et al. 2024, "MobileCLIP", eq. 2; apple/ml-mobileclip
training/open_clip.patch, `DistillClipLoss.dist_loss` and `forward`). A student
with image and text features X, Y (B, D) and learned scale s, a frozen teacher
with U, V (B, Dt) and scale t give two similarity matrices

    S = s·X·Yᵀ   T = t·U·Vᵀ                         (B, B)

and the loss matches the teacher's softmax distributions over the batch, per
image (rows) and per text (columns), averaged over both directions:

    loss = ½ [ (1/B) Σ_i KL(P^t_i· ‖ P^s_i·) + (1/B) Σ_j KL(Q^t_·j ‖ Q^s_·j) ]

P = row softmax, Q = column softmax. Where we chose:

- KL, not MobileCLIP's cross-entropy −Σ p^t log p^s: the two differ by the
  teacher's entropy, a constant of the batch, so every gradient is the same;
  KL is 0 when the student matches, which makes the logged number readable.
- One teacher matrix. MobileCLIP distils from an ensemble of two (768 + 768
  dims) and averages the two teachers' softmaxes
  (`--distill-average-after-softmax`); `vecap embed` stores the ensemble as one
  row per view, concatenated (its default: a dot product of two such rows is the
  mean of the teachers' cosines) or averaged, so T is one matrix: the softmax of
  the teachers' mean similarity, not the mean of their softmaxes.
- t is a constant: MobileCLIP's DataCompDR runs fix it at 100
  (`--distill-logit-scale 100`); the teacher gets no gradient at all.

Across ranks (`distill_loss_local`) the loss is open_clip's `local_loss=True`
form, as MobileCLIP trains (`--local-loss --gather-with-grad`): a rank's rows
against every rank's gathered columns, teacher and student alike.

The gradient. ∂loss/∂S = (P^s − P^t + Q^s − Q^t) / (2B): CLIP's
G = P + Q − 2·onehot with the one-hot labels replaced by the teacher's soft
ones. The forward needs, besides the four log-sum-exps, one cross term:

    KL(P^t_i ‖ P^s_i) = Σ_j P^t_ij (T_ij − S_ij) + lse(S_i·) − lse(T_i·)

The chain, imports going down:

    FusedDistillClipLoss                    open_clip's DistillClipLoss interface
    distill_loss, distill_loss_local        functional
    _Distill                                autograd.Function, O(B·(D + Dt)) saved
    kernels   `distill_triton` (CUDA) or `TorchKernels` below (CPU)

A kernel set provides

    forward(X, Y, s, U, V, t, cols)   (lse_s_x, lse_t_x, lse_s_y, lse_t_y, cross)
        per-row log-sum-exps of S and T (m,), per-column ones (n,) when `cols`,
        and cross = Σ P^t∘(T − S) [+ Σ Q^t∘(T − S)]
    grad(X, Y, s, U, V, t, lse_s_x, lse_t_x, lse_s_y, lse_t_y)
        (G·Y, Gᵀ·X, Σ G∘(X·Yᵀ)) for G = P^s − P^t [+ Q^s − Q^t] (column terms
        when their lses are given)

`distill_loss_reference` builds S and T whole: the oracle of the tests and the
dense baseline of the benchmark.
"""

from __future__ import annotations

from types import ModuleType

import torch
import torch.nn.functional as F

from vecap_cli.core import tiles
from vecap_cli.core.clip import FusedClipLoss
from vecap_cli.core.distributed import _all_gather_no_grad, gather_features
from vecap_cli.core.tiles import as_scale, check_features, pick_kernels, row_chunks

# MobileCLIP's teacher logit scale (run_datacompdr*.sh: --distill-logit-scale 100)
TEACHER_SCALE = 100.0

# -- reference ---------------------------------------------------------------------


def _kl_rows(teacher_logits, student_logits):
    """(1/rows) Σ_i KL(softmax(T_i·) ‖ softmax(S_i·))."""
    return F.kl_div(
        F.log_softmax(student_logits, dim=1),
        F.log_softmax(teacher_logits, dim=1),
        reduction="batchmean",
        log_target=True,
    )


def distill_loss_reference(
    image_features, text_features, logit_scale, teacher_image, teacher_text, teacher_scale
):
    """The loss above, densely: (B, B) student and teacher logits."""
    student = logit_scale * image_features @ text_features.T  # (B, B)
    teacher = (teacher_scale * teacher_image @ teacher_text.T).detach()  # (B, B)
    return (_kl_rows(teacher, student) + _kl_rows(teacher.T, student.T)) / 2


# -- tiled torch kernels (CPU path, fallback) ------------------------------------------


def _chunk_rows(n: int) -> int:
    """Rows per chunk: an eighth of tiles.TILE_ELEMENTS (1M elements, 4 MiB of fp32), as
    multipos takes, since a chunk holds S, T and two or three temporaries of its size.
    At B = 4096 (benchmarks/RESULTS.md) the peak was 0.17× dense's with these chunks,
    0.25× with twice as many rows; the larger chunks ran faster on a loaded CPU (each
    chunk is some forty torch ops, and there every op's thread sync costs more than
    its arithmetic), 1.6× dense's time against 2.0×."""
    return max(1, tiles.TILE_ELEMENTS // 8 // max(n, 1))


class _OnlineColumns:
    """Per-column log-sum-exp of S and T and Σ_i Q^t_ij (T_ij − S_ij), over row chunks:
    running maxima, with the sums rescaled whenever a maximum grows."""

    def __init__(self, n: int, like: torch.Tensor):
        self.max_s = like.new_full((n,), float("-inf"))
        self.sum_s = like.new_zeros(n)
        self.max_t = like.new_full((n,), float("-inf"))
        self.sum_t = like.new_zeros(n)
        self.cross = like.new_zeros(n)  # Σ_i exp(T_ij − max_t_j)·(T_ij − S_ij)

    def add(self, s, t, diff):
        """One chunk: s, t (c, n) are consumed; diff = t − s."""
        new_max = torch.maximum(self.max_s, s.amax(dim=0))
        self.sum_s.mul_((self.max_s - new_max).exp_()).add_(s.sub_(new_max).exp_().sum(dim=0))
        self.max_s = new_max
        new_max = torch.maximum(self.max_t, t.amax(dim=0))
        rescale = (self.max_t - new_max).exp_()
        e = t.sub_(new_max).exp_()  # (c, n)
        self.sum_t.mul_(rescale).add_(e.sum(dim=0))
        self.cross.mul_(rescale).add_(e.mul_(diff).sum(dim=0))
        self.max_t = new_max

    def result(self):
        lse_s = self.max_s + self.sum_s.log()
        lse_t = self.max_t + self.sum_t.log()
        return lse_s, lse_t, (self.cross / self.sum_t).sum()


class TorchKernels:
    """The kernel set in torch: chunks of rows of S and T, fp32, one pass forward
    (columns online), one pass backward recomputing both."""

    @staticmethod
    def forward(x, y, scale, u, v, t_scale, cols: bool):
        x, y, u, v = x.float(), y.float(), u.float(), v.float()  # (m, D) (n, D) (m, Dt) (n, Dt)
        m, n = x.shape[0], y.shape[0]
        lse_sx, lse_tx = x.new_empty(m), x.new_empty(m)  # (m,)
        columns = _OnlineColumns(n, x) if cols else None
        cross = x.new_zeros(())
        for start, stop in row_chunks(m, n, _chunk_rows(n)):
            s = (x[start:stop] * scale) @ y.T  # (c, n)
            t = (u[start:stop] * t_scale) @ v.T  # (c, n)
            lse_sx[start:stop] = torch.logsumexp(s, dim=1)
            lse_tx[start:stop] = torch.logsumexp(t, dim=1)
            diff = t - s
            p_t = torch.sub(t, lse_tx[start:stop, None]).exp_()  # P^t
            cross += torch.vdot(p_t.view(-1), diff.view(-1))  # no product tensor
            if columns is not None:
                columns.add(s, t, diff)
        if columns is None:
            return lse_sx, lse_tx, None, None, cross
        lse_sy, lse_ty, cross_cols = columns.result()
        return lse_sx, lse_tx, lse_sy, lse_ty, cross + cross_cols

    @staticmethod
    def grad(x, y, scale, u, v, t_scale, lse_sx, lse_tx, lse_sy, lse_ty):
        x, y, u, v = x.float(), y.float(), u.float(), v.float()
        gx = torch.empty_like(x)  # (m, D)
        gy = torch.zeros_like(y)  # (n, D)
        for start, stop in row_chunks(x.shape[0], y.shape[0], _chunk_rows(y.shape[0])):
            xc = x[start:stop]  # (c, D)
            s = (xc * scale) @ y.T  # (c, n)
            t = (u[start:stop] * t_scale) @ v.T  # (c, n)
            g = torch.sub(s, lse_sx[start:stop, None]).exp_()  # P^s
            g.sub_(torch.sub(t, lse_tx[start:stop, None]).exp_())  # − P^t
            if lse_sy is not None:
                g.add_(s.sub_(lse_sy).exp_()).sub_(t.sub_(lse_ty).exp_())  # + Q^s − Q^t
            torch.mm(g, y, out=gx[start:stop])
            gy.addmm_(g.T, xc)
        return gx, gy, (x * gx).sum()


def _kernels(features: torch.Tensor, backend: str | None) -> type[TorchKernels] | ModuleType:
    return pick_kernels(features, backend, "vecap_cli.core.distill_triton", TorchKernels)


# -- autograd ----------------------------------------------------------------------------


class _Distill(torch.autograd.Function):
    """Rows X (m, D) against columns Y (n, D), teacher U (m, Dt), V (n, Dt):
    with `cols` (m = n) the symmetric loss above, else the row term alone, (1/m) Σ_i KL_i."""

    @staticmethod
    def forward(ctx, x, y, scale, u, v, t_scale, cols, kernels):
        with torch.autocast(x.device.type, enabled=False):
            lse_sx, lse_tx, lse_sy, lse_ty, cross = kernels.forward(
                x, y, scale, u, v, t_scale, cols
            )
            total = cross + lse_sx.sum() - lse_tx.sum()
            if cols:
                total = total + lse_sy.sum() - lse_ty.sum()
            norm = 2 * x.shape[0] if cols else x.shape[0]
            loss = total / norm
        saved = (lse_sy, lse_ty) if cols else ()
        ctx.save_for_backward(x, y, scale, u, v, t_scale, lse_sx, lse_tx, *saved)
        ctx.kernels, ctx.norm = kernels, norm
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        x, y, scale, u, v, t_scale, lse_sx, lse_tx, *cols = ctx.saved_tensors
        lse_sy, lse_ty = cols or (None, None)
        with torch.autocast(x.device.type, enabled=False):
            gx, gy, gdot = ctx.kernels.grad(
                x, y, scale, u, v, t_scale, lse_sx, lse_tx, lse_sy, lse_ty
            )
            w = grad_loss.float() / ctx.norm  # ∂loss/∂S = w·G
            gx, gy = gx.mul_(w * scale), gy.mul_(w * scale)  # in place: fp32 buffers of ours
        return gx.to(x.dtype), gy.to(y.dtype), w * gdot, None, None, None, None, None


# -- functional --------------------------------------------------------------------------


def _check(image, text, teacher_image, teacher_text) -> None:
    check_features(image, text)
    check_features(teacher_image, teacher_text)
    if teacher_image.shape[0] != image.shape[0] or teacher_text.shape[0] != text.shape[0]:
        raise ValueError(
            f"teacher rows {teacher_image.shape[0]}, {teacher_text.shape[0]} do not match "
            f"the student's {image.shape[0]}, {text.shape[0]}"
        )


def distill_loss(
    image_features,
    text_features,
    logit_scale,
    teacher_image,
    teacher_text,
    teacher_scale=TEACHER_SCALE,
    *,
    backend=None,
):
    """The distillation loss (module docstring) in one process, tiled.

    Student features (B, D), teacher features (B, Dt), fp32/bf16/fp16, accumulated
    in fp32; logit_scale already exponentiated and differentiable, teacher_scale a
    constant. Returns a 0-dim fp32 loss; the teacher gets no gradient. `backend`
    ("torch" | "triton") overrides dispatch.
    """
    _check(image_features, text_features, teacher_image, teacher_text)
    if image_features.shape[0] != text_features.shape[0]:
        raise ValueError("distill_loss needs as many images as texts")
    kernels = _kernels(image_features, backend)
    scale = as_scale(logit_scale, image_features)
    t_scale = as_scale(teacher_scale, image_features).detach()
    return _Distill.apply(
        image_features, text_features, scale, teacher_image.detach(), teacher_text.detach(),
        t_scale, True, kernels,
    )  # fmt: skip


def distill_loss_local(
    image_features,
    text_features,
    all_image_features,
    all_text_features,
    logit_scale,
    teacher_image,
    teacher_text,
    all_teacher_image,
    all_teacher_text,
    teacher_scale=TEACHER_SCALE,
    *,
    backend=None,
):
    """One rank's loss in the local form: this rank's b images against all texts
    (world·b), and its b texts against all images, teacher likewise; the mean over
    ranks is the global batch's loss. Gather the student's features with
    `distributed.all_gather_with_grad` for gradients to reach other ranks."""
    _check(image_features, all_text_features, teacher_image, all_teacher_text)
    _check(text_features, all_image_features, teacher_text, all_teacher_image)
    kernels = _kernels(image_features, backend)
    scale = as_scale(logit_scale, image_features)
    t_scale = as_scale(teacher_scale, image_features).detach()
    per_image = _Distill.apply(
        image_features, all_text_features, scale, teacher_image.detach(),
        all_teacher_text.detach(), t_scale, False, kernels,
    )  # fmt: skip
    per_text = _Distill.apply(
        text_features, all_image_features, scale, teacher_text.detach(),
        all_teacher_image.detach(), t_scale, False, kernels,
    )  # fmt: skip
    return (per_image + per_text) / 2


# -- module --------------------------------------------------------------------------------


class FusedDistillClipLoss(FusedClipLoss):
    """open_clip's `DistillClipLoss` interface (constructor of ClipLoss; forward with the
    teacher's features and scale), returning (contrastive, distill) unweighted as it
    does, the distillation term being the KL form above. The teacher's features are
    gathered without gradient."""

    def forward(
        self,
        image_features,
        text_features,
        logit_scale,
        dist_image_features,
        dist_text_features,
        dist_logit_scale=TEACHER_SCALE,
        output_dict=False,
    ):
        contrastive = self._loss(image_features, text_features, logit_scale, None)
        distill = self.distillation(
            image_features, text_features, logit_scale,
            dist_image_features, dist_text_features, dist_logit_scale,
        )  # fmt: skip
        if output_dict:
            return {"contrastive_loss": contrastive, "distill_loss": distill}
        return contrastive, distill

    def distillation(self, image, text, scale, t_image, t_text, t_scale=TEACHER_SCALE):
        """The distillation term alone, across this module's ranks."""
        if self.world_size == 1:
            return distill_loss(image, text, scale, t_image, t_text, t_scale, backend=self.backend)
        all_image, all_text = gather_features(
            image,
            text,
            local_loss=self.local_loss,
            gather_with_grad=self.gather_with_grad,
            rank=self.rank,
            world_size=self.world_size,
        )
        all_t_image = torch.cat(_all_gather_no_grad(t_image, self.world_size))
        all_t_text = torch.cat(_all_gather_no_grad(t_text, self.world_size))
        if not self.local_loss:
            return distill_loss(
                all_image, all_text, scale, all_t_image, all_t_text, t_scale, backend=self.backend
            )
        return distill_loss_local(
            image, text, all_image, all_text, scale,
            t_image, t_text, all_t_image, all_t_text, t_scale, backend=self.backend,
        )  # fmt: skip
