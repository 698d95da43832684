"""Every training setting in one frozen dataclass, built at the CLI edge.

The library below reads nothing else: no flags, no environment (where the
process runs, its rank, world size, GPU and rendezvous, arrives resolved as the
`Placement` in `RunOptions`). The names --loss and --attn take are the
registries' in contrastive.py and attention.py.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from vecap_cli.positions import MAX_CONTEXT_LENGTH
from vecap_cli.train.attention import ATTENTION
from vecap_cli.train.contrastive import LOSSES

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class TrainConfig:
    # data
    inputs: tuple[str, ...]
    output: str
    text_keys: tuple[str, ...] | None = None  # None: `text`, else `alt`
    text_probs: tuple[float, ...] | None = None
    train_num_samples: int | None = None  # None: count the inputs once
    shuffle_buffer: int = 1000
    workers: int = 2
    resample: bool = False
    online_curation: bool = False  # draw each record per epoch from curate.p (MetaCLIP 1.2/2)
    positives: int = 1  # captions per image in a batch (multi-positive loss when > 1)
    # model
    model: str = "vecap-tiny"
    pretrained: str | None = None
    context_length: int | None = None  # text tokens; None: the model's own
    loss: str = "clip"
    attn: str = "auto"
    caption_loss_weight: float = 2.0  # CoCa, open_clip's defaults
    contrastive_loss_weight: float = 1.0
    distill: bool = False  # MobileCLIP: match stored teacher embeddings' similarities
    distill_weight: float = 1.0  # λ; MobileCLIP's DataCompDR runs train on distillation alone
    teacher_scale: float = 100.0  # MobileCLIP's --distill-logit-scale
    # optimisation
    batch_size: int = 64  # per rank
    epochs: int = 1
    lr: float = 5e-4
    wd: float = 0.2
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-6
    warmup: int = 100
    grad_clip_norm: float | None = None
    grad_checkpointing: bool = False
    compile: bool = False
    precision: str = "auto"
    device: str = "auto"
    # checkpoints and output
    save_every: int = 0  # steps; 0: at the end of each epoch only
    keep: int = 0  # checkpoints kept; 0: all
    resume: str | None = None  # 'latest' or a checkpoint path
    log: str | None = None  # metrics JSONL
    log_every: int = 50
    val: tuple[str, ...] = ()
    val_every: int = 0  # steps; 0: at the end of each epoch
    val_num_samples: int = 1000
    seed: int = 0

    def __post_init__(self):
        checks = [
            (self.loss in LOSSES, "--loss", f"choose from {', '.join(LOSSES)}"),
            (self.attn in ATTENTION, "--attn", f"choose from {', '.join(ATTENTION)}"),
            (self.precision in PRECISIONS, "--precision", f"choose from {', '.join(PRECISIONS)}"),
            (self.device in DEVICES, "--device", f"choose from {', '.join(DEVICES)}"),
            (self.batch_size >= 1, "--batch-size", "must be at least 1"),
            (self.positives >= 1, "--positives", "must be at least 1"),
            (self.epochs >= 1, "--epochs", "must be at least 1"),
            (self.workers >= 0, "--workers", "must be 0 or more"),
            (self.shuffle_buffer >= 1, "--shuffle-buffer", "must be at least 1"),
            (self.lr > 0, "--lr", "must be positive"),
            (self.warmup >= 0, "--warmup", "must be 0 or more"),
            (0.0 <= self.distill_weight <= 1.0, "--distill-weight", "must be in [0, 1]"),
            (self.teacher_scale > 0, "--teacher-scale", "must be positive"),
        ]
        for ok, flag, why in checks:
            if not ok:
                raise ValueError(f"{flag}: {why}")
        if self.text_probs is not None:
            if self.text_keys is None:
                raise ValueError("--text-probs: needs --text-keys")
            from vecap_cli.steps.mix import check_probs

            check_probs(self.text_probs, self.text_keys, "--text-probs")
        if self.train_num_samples is not None and self.train_num_samples < 1:
            raise ValueError("--train-num-samples: must be at least 1")
        if self.context_length is not None and not (2 <= self.context_length <= MAX_CONTEXT_LENGTH):
            raise ValueError(f"--context-length: choose from 2 to {MAX_CONTEXT_LENGTH} tokens")

    def as_dict(self) -> dict:
        """JSON-able, for checkpoints and --stats."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    # What a resumed run must share with the run it continues, or its data
    # positions and schedule would mean something else.
    RESUME_KEYS = (
        "inputs",
        "model",
        "context_length",
        "loss",
        "batch_size",
        "epochs",
        "workers",
        "shuffle_buffer",
        "resample",
        "online_curation",
        "text_keys",
        "text_probs",
        "positives",
        "seed",
        "distill",
    )
