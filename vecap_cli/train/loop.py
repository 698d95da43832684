"""The training loop: AdamW, warmup + cosine, AMP, clipping, DDP, checkpoints.

`train_step` is one optimizer step on one batch, the unit the DDP test checks
against a single process. `Trainer` owns a run: it builds the model, data and
optimizer from a TrainConfig, restores a checkpoint, runs the epochs and, after
each step, logs, validates and saves as asked.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from itertools import islice
from typing import TYPE_CHECKING

import torch
from torch import nn

from vecap_cli.errors import VecapError
from vecap_cli.positions import with_context_length
from vecap_cli.process_group import leave
from vecap_cli.steps.mix import NO_P, NOT_DRAWN
from vecap_cli.stream.runner import per_rank, write_stats
from vecap_cli.stream.sources import expand
from vecap_cli.stream.tally import Tally
from vecap_cli.train import checkpoint
from vecap_cli.train import distributed as D
from vecap_cli.train.config import TrainConfig
from vecap_cli.train.data import (
    Batch,
    DataPlan,
    Position,
    TrainData,
    count_samples,
    expected_samples,
    first_teacher_dim,
    loader,
    replay,
)
from vecap_cli.train.losses import TrainLoss, make_loss
from vecap_cli.train.metrics import MetricsLog, Rate, progress
from vecap_cli.train.models import Bundle, build, clamp_logit_scale, set_attention
from vecap_cli.train.schedule import cosine_lr

if TYPE_CHECKING:
    from vecap_cli.stream.runner import RunOptions  # the run flags: stats, rejects, strict, log

# -- one step -----------------------------------------------------------------------


def param_groups(model: nn.Module, wd: float) -> list[dict]:
    """open_clip's split: no weight decay on gains, biases, embeddings' scale and logit_scale."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        exclude = (
            p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name
        )
        (no_decay if exclude else decay).append(p)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": wd}]


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(
        param_groups(model, cfg.wd),
        lr=cfg.lr,
        betas=(cfg.beta1, cfg.beta2),
        eps=cfg.eps,
        fused=True,
    )


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise VecapError("--precision fp16: needs a CUDA device (use bf16 or fp32 on CPU)")
    return precision


def autocast(precision: str, device: torch.device):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def train_step(
    model: nn.Module,
    loss_fn: TrainLoss,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    texts: torch.Tensor,
    *,
    raw: nn.Module | None = None,
    precision: str = "fp32",
    scaler: torch.amp.GradScaler | None = None,
    clip_norm: float | None = None,
    teacher: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> dict[str, float]:
    """One optimizer step; `raw` is the unwrapped model (under DDP or compile);
    `teacher`: the batch's teacher embeddings, with --distill."""
    raw = raw or model
    model.train()
    optimizer.zero_grad(set_to_none=True)
    with autocast(precision, images.device):
        parts = loss_fn(model(images, texts), teacher)
        total = sum(parts.values())
    if scaler is not None:
        scaler.scale(total).backward()
        scaler.unscale_(optimizer)
    else:
        total.backward()
    if clip_norm:
        nn.utils.clip_grad_norm_(raw.parameters(), clip_norm)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    clamp_logit_scale(raw)
    return {"loss": total.item(), **{k: v.item() for k, v in parts.items() if len(parts) > 1}}


# -- a run --------------------------------------------------------------------------


@dataclass
class State:
    """Where a run stands; with the weights and optimizer, what a checkpoint restores."""

    step: int = 0  # optimizer steps done
    epoch: int = 0
    epoch_step: int = 0  # steps done in `epoch`
    positions: list[Position] = field(default_factory=list)  # per data worker
    losses: list[float] = field(default_factory=list)  # per step, for the PNG


class Trainer:
    def __init__(self, cfg: TrainConfig, opts: RunOptions, ctx: D.Dist):
        self.cfg, self.opts, self.ctx = cfg, opts, ctx
        self.resume_from = checkpoint.resolve_resume(cfg.resume, cfg.output)
        if cfg.resume is None and checkpoint.checkpoints(cfg.output):
            raise VecapError(
                f"-o {cfg.output} holds checkpoints of another run: "
                "--resume latest continues it, or choose another directory"
            )
        self.inputs = tuple(expand(cfg.inputs))
        self.val_inputs = tuple(expand(cfg.val)) if cfg.val else ()
        self.precision = resolve_precision(cfg.precision, ctx.device)
        self.bundle = self._model()
        self.loss_fn = make_loss(
            cfg.loss,
            rank=ctx.rank,
            world_size=ctx.world_size,
            coca=self.bundle.coca,
            contrastive_weight=cfg.contrastive_loss_weight,
            caption_weight=cfg.caption_loss_weight,
            distill_weight=cfg.distill_weight if cfg.distill else None,
            teacher_scale=cfg.teacher_scale,
            positives=cfg.positives,
        )
        self.optimizer = make_optimizer(self.raw, cfg)
        self.scaler = torch.amp.GradScaler("cuda") if self.precision == "fp16" else None
        self.workers = max(1, cfg.workers)
        self.teacher_dim = first_teacher_dim(self.inputs) if cfg.distill else 0
        self.steps_per_epoch = self._steps_per_epoch()
        self.total = self.steps_per_epoch * cfg.epochs
        self.state = State(positions=self._fresh_positions())
        self.tally = Tally("train", strict=opts.strict)
        self.data = TrainData(self._plan(), self.bundle.train_transform, self.bundle.tokenizer)
        self.valset = None
        if cfg.positives > 1 and ctx.main:
            opts.log(
                f"--positives {cfg.positives}: each step {cfg.batch_size:,} images and "
                f"{cfg.batch_size * cfg.positives:,} texts per rank (multi-positive {cfg.loss} loss)"
            )

    # -- setup ------------------------------------------------------------------
    def _model(self) -> Bundle:
        cfg, ctx = self.cfg, self.ctx
        bundle = build(
            cfg.model,
            cfg.pretrained,
            seed=cfg.seed,
            device=str(ctx.device),
            context_length=cfg.context_length,
        )
        if bundle.resized_from is not None and ctx.main:
            how = (
                "stretched Long-CLIP's way"
                if bundle.resized_from < bundle.context_length
                else "truncated"
            )
            self.opts.log(
                f"text positions {how}: {bundle.resized_from} -> {bundle.context_length} tokens"
            )
        self.raw = bundle.model
        self.attn = set_attention(self.raw, cfg.attn)
        if cfg.grad_checkpointing:
            self.raw.set_grad_checkpointing(True)
        model: nn.Module = self.raw
        if ctx.world_size > 1:
            ids = [ctx.device.index] if ctx.device.type == "cuda" else None
            model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
        if cfg.compile:
            model = torch.compile(model)
        self.model = model
        return bundle

    def _steps_per_epoch(self) -> int:
        cfg, ctx = self.cfg, self.ctx
        n = cfg.train_num_samples
        counted = n is None and not cfg.online_curation
        if counted:
            n = count_samples(self.inputs)
        elif n is None:
            n = self._expected_epoch()
        global_batch = cfg.batch_size * ctx.world_size
        if n < global_batch:
            raise VecapError(
                f"--train-num-samples: {n:,} samples make no global batch of {global_batch:,} "
                "(--batch-size × ranks)"
            )
        if counted and ctx.main:
            self.opts.log(f"{n:,} samples per epoch (counted; --train-num-samples skips this)")
        return n // global_batch

    def _expected_epoch(self) -> int:
        """Online curation's epoch: the expected size of a draw, the sum of curate.p."""
        expected, records = expected_samples(self.inputs)
        if not expected:
            raise VecapError(
                f"--online-curation: no record of the {records:,} in the inputs has a curate.p "
                "above 0 (write the pool with `vecap curate --keep-matched`)"
            )
        if self.ctx.main:
            self.opts.log(
                f"{round(expected):,} samples per epoch (online curation: the sum of curate.p "
                f"over {records:,} records; --train-num-samples skips this)"
            )
        return round(expected)

    def _plan(self) -> DataPlan:
        cfg, ctx = self.cfg, self.ctx
        return DataPlan(
            inputs=self.inputs,
            batch_size=cfg.batch_size,
            workers=self.workers,
            rank=ctx.rank,
            world_size=ctx.world_size,
            seed=cfg.seed,
            shuffle_buffer=cfg.shuffle_buffer,
            resample=cfg.resample,
            text_keys=cfg.text_keys,
            text_probs=cfg.text_probs,
            online_curation=cfg.online_curation,
            positives=cfg.positives,
            image_limits=self.opts.image_limits,
            distill=cfg.distill,
            teacher_dim=self.teacher_dim,
        )

    def _fresh_positions(self) -> list[Position]:
        return [(0, 0)] * self.workers

    # -- resume -----------------------------------------------------------------
    def resume(self) -> None:
        path = self.resume_from
        if path is None:
            if self.cfg.resume:
                self.opts.log(f"no checkpoint in {self.cfg.output} yet: starting fresh")
            return
        payload = checkpoint.load(path)
        self._check_compatible(payload, path)
        self.raw.load_state_dict(payload["state_dict"])
        self.optimizer.load_state_dict(payload["optimizer"])
        if self.scaler is not None and payload.get("scaler"):
            self.scaler.load_state_dict(payload["scaler"])
        mine = payload["ranks"][self.ctx.rank]
        self.state = State(
            step=payload["step"],
            epoch=payload["epoch"],
            epoch_step=payload["epoch_step"],
            positions=[tuple(p) for p in mine["positions"]],
            losses=payload["loss_history"].tolist(),
        )
        self.tally.restore(mine["counts"])
        self._rejects_offset = mine["rejects_offset"]
        torch.set_rng_state(payload["rng"])
        self.opts.log(f"resumed from {path} at step {self.state.step:,}")

    def _check_compatible(self, payload: dict, path) -> None:
        before = payload.get("config", {})
        now = self.cfg.as_dict()
        fields = TrainConfig.__dataclass_fields__
        for key in TrainConfig.RESUME_KEYS:
            # a key newer than the checkpoint: it was trained with that key's default
            if before.get(key, fields[key].default) != now[key]:
                flag = "--" + key.replace("_", "-")
                raise VecapError(
                    f"--resume: {path} was trained with {flag} {before.get(key)!r}, not {now[key]!r}"
                )
        if payload.get("world_size") != self.ctx.world_size:
            raise VecapError(
                f"--resume: {path} was trained on {payload.get('world_size')} ranks, not "
                f"{self.ctx.world_size}"
            )
        if payload.get("steps_per_epoch") != self.steps_per_epoch:
            raise VecapError(
                f"--resume: {path} has {payload.get('steps_per_epoch')} steps per epoch, not "
                f"{self.steps_per_epoch} (--train-num-samples)"
            )

    # -- the run ----------------------------------------------------------------
    _rejects_offset = 0

    def fit(self) -> None:
        self._open_outputs()
        try:
            with progress(
                self.total,
                self.state.step,
                self.opts.log,
                self.cfg.log_every,
                enabled=self.ctx.main and not self.opts.quiet,
            ) as update:
                self._update = update
                while self.state.epoch < self.cfg.epochs:
                    self._epoch()
        finally:
            self._close_outputs()

    def _epoch(self) -> None:
        state, steps = self.state, self.steps_per_epoch
        epoch, before = state.epoch, self._drawn_so_far()
        self.data.start_epoch(state.epoch, steps, state.epoch_step, state.positions)
        rate = Rate()
        for batch in islice(loader(self.data, self.cfg.workers), steps - state.epoch_step):
            self._account(batch)
            metrics = self._step(batch)
            metrics["steps_per_s"] = rate.tick()
            metrics["samples_per_s"] = (
                metrics["steps_per_s"] * len(batch.images) * self.ctx.world_size
            )
            self._advance(batch, metrics["loss"])
            self._after_step(metrics)
        if self.cfg.online_curation:
            self._report_draw(epoch, before)

    def _drawn_so_far(self) -> tuple[int, int]:
        """(records read, records online curation kept) on this rank so far."""
        t = self.tally
        return t.n_in, t.n_in - t.dropped[NOT_DRAWN] - t.rejected[NO_P]

    def _report_draw(self, epoch: int, before: tuple[int, int]) -> None:
        """Logs (and keeps for --stats) how many records the epoch's draw kept, over
        all ranks: the epoch trains on a fixed number of batches, so this is what
        the draw kept of the records read to fill them."""
        now = self._drawn_so_far()
        mine = (now[0] - before[0], now[1] - before[1])
        read, kept = (sum(x) for x in zip(*D.gather(mine, self.ctx), strict=True))
        self.tally.extra.setdefault("online_curation", []).append(
            {"epoch": epoch, "read": read, "kept": kept}
        )
        if self.ctx.main:
            share = f" ({kept / read:.1%})" if read else ""
            self.opts.log(f"epoch {epoch}: online curation kept {kept:,} of {read:,} read{share}")

    def _account(self, batch: Batch) -> None:
        if batch.error:
            raise VecapError(batch.error)
        replay(batch.events, self.tally)
        self.tally.n_in += batch.n_in
        self.tally.n_out += len(batch.images)

    def _step(self, batch: Batch) -> dict:
        device, state = self.ctx.device, self.state
        lr = cosine_lr(state.step, self.cfg.lr, self.cfg.warmup, self.total)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        metrics = train_step(
            self.model,
            self.loss_fn,
            self.optimizer,
            batch.images.to(device, non_blocking=True),
            batch.texts.to(device, non_blocking=True),
            raw=self.raw,
            precision=self.precision,
            scaler=self.scaler,
            clip_norm=self.cfg.grad_clip_norm,
            teacher=batch.teacher,
        )
        metrics["loss"] = D.mean(metrics["loss"], self.ctx)
        return {"epoch": state.epoch, **metrics, "lr": lr}

    def _advance(self, batch: Batch, loss: float) -> None:
        state = self.state
        state.positions[batch.worker] = batch.position
        state.step += 1
        state.epoch_step += 1
        state.losses.append(loss)
        if state.epoch_step == self.steps_per_epoch:  # a checkpoint now starts the next epoch
            state.epoch, state.epoch_step = state.epoch + 1, 0
            state.positions = self._fresh_positions()

    def _after_step(self, metrics: dict) -> None:
        cfg, step = self.cfg, self.state.step
        epoch_end = self.state.epoch_step == 0
        metrics["logit_scale"] = self.raw.logit_scale.exp().item()
        self.metrics.write({"step": step, **metrics})
        self._update(step, metrics)
        if self.valset is not None and (
            (cfg.val_every and step % cfg.val_every == 0) or (not cfg.val_every and epoch_end)
        ):
            self._validate()
        if (cfg.save_every and step % cfg.save_every == 0) or epoch_end:
            self.save()

    def _validate(self) -> None:
        from vecap_cli.train.validate import retrieval

        b = self.bundle
        scores = retrieval(
            self.raw, self.valset, b.val_transform, b.tokenizer, self.ctx.device,
            self.opts.image_limits,
        )  # fmt: skip
        self.metrics.write({"step": self.state.step, "val": scores})
        shown = " · ".join(f"{k} {v:.3f}" for k, v in scores.items())
        self.opts.log(f"val at step {self.state.step:,}: {shown}")

    # -- outputs ----------------------------------------------------------------
    def _open_outputs(self) -> None:
        cfg, ctx = self.cfg, self.ctx
        os.makedirs(cfg.output, exist_ok=True)
        resumed = self.state.step if self.cfg.resume and self.state.step else None
        self.metrics = MetricsLog(cfg.log if ctx.main else None, resumed)
        self.tally.rejects = self._open_rejects()
        if self.val_inputs and ctx.main:
            from vecap_cli.train.validate import load_valset

            self.valset = load_valset(self.val_inputs, cfg.val_num_samples)

    def _open_rejects(self):
        if not self.opts.rejects:
            return None
        path = per_rank(self.opts.rejects, self.ctx.rank, self.ctx.world_size)
        try:
            if self._rejects_offset and os.path.exists(path):
                os.truncate(path, self._rejects_offset)
                return open(path, "ab")
            return open(path, "wb")
        except OSError as err:
            raise VecapError(f"--rejects: cannot write '{path}': {err.strerror}") from None

    def _close_outputs(self) -> None:
        self.metrics.close()
        if self.tally.rejects is not None:
            self.tally.rejects.close()

    def save(self) -> None:
        mine = {
            "positions": [list(p) for p in self.state.positions],
            "counts": self._counts(),
            "rejects_offset": self._flush_rejects(),
        }
        ranks = D.gather(mine, self.ctx)
        if not self.ctx.main:
            return
        state = self.state
        payload = {
            "state_dict": self.raw.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "step": state.step,
            "epoch": state.epoch,
            "epoch_step": state.epoch_step,
            "loss_history": torch.tensor(state.losses, dtype=torch.float64),
            "rng": torch.get_rng_state(),
            "ranks": ranks,
            "model": self.cfg.model,
            "context_length": self.bundle.context_length,  # what eval tokenizes to
            "config": self.cfg.as_dict(),
            "world_size": self.ctx.world_size,
            "steps_per_epoch": self.steps_per_epoch,
        }
        self.last_checkpoint = checkpoint.save(self.cfg.output, state.step, payload, self.cfg.keep)

    def _counts(self) -> dict:
        t = self.tally
        return {
            "in": t.n_in,
            "out": t.n_out,
            "dropped": dict(t.dropped),
            "rejected": dict(t.rejected),
            "added": dict(t.added),
        }

    def _flush_rejects(self) -> int:
        if self.tally.rejects is None:
            return 0
        self.tally.rejects.flush()
        return self.tally.rejects.tell()

    def finish(self) -> None:
        """The open_clip directory, the loss PNG and --stats."""
        cfg, ctx = self.cfg, self.ctx
        if ctx.main:
            self._export()
            if self.state.losses:
                from vecap_cli.train.plot import plot_loss

                plot_loss(self.state.losses, os.path.join(cfg.output, "loss.png"), cfg.model)
        if self.opts.stats:
            self.tally.extra.update(
                steps=self.state.step,
                epochs=cfg.epochs,
                loss=self.state.losses[-1] if self.state.losses else None,
                attention=self.attn,
                context_length=self.bundle.context_length,
                loss_impl="fused" if self.loss_fn.fused else "open_clip",
                positives=cfg.positives,
                checkpoint=str(getattr(self, "last_checkpoint", "")) or None,
            )
            write_stats(per_rank(self.opts.stats, ctx.rank, ctx.world_size), self.tally)

    def _export(self) -> None:
        import open_clip

        model_cfg = open_clip.get_model_config(self.cfg.model)
        if model_cfg is not None and self.bundle.context_length is not None:
            model_cfg = with_context_length(model_cfg, self.bundle.context_length)
        preprocess = dict(getattr(self.raw.visual, "preprocess_cfg", {}))
        checkpoint.export(self.cfg.output, self.raw.state_dict(), model_cfg, preprocess)


def train(cfg: TrainConfig, opts: RunOptions) -> Tally:
    ctx = D.setup(opts, cfg.device, opts.log)
    D.cpu_threads(ctx.device, cfg.workers)
    try:
        trainer = Trainer(cfg, opts, ctx)
        trainer.resume()
        trainer.fit()
        trainer.finish()
        return trainer.tally
    finally:
        leave()
