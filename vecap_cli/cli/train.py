"""vecap train: CLIP, SigLIP or CoCa training of open_clip models on the fused core."""

from collections.abc import Iterable
from enum import StrEnum
from typing import Annotated

import typer

from vecap_cli.cli.options import RunOptions, finite, floats, report, run_command
from vecap_cli.train.attention import ATTENTION
from vecap_cli.train.config import DEVICES, PRECISIONS
from vecap_cli.train.contrastive import LOSSES

_DATA, _MODEL, _OPT, _OUT = "Data", "Model", "Optimisation", "Output"


def _choices(name: str, names: Iterable[str]) -> type[StrEnum]:
    """typer takes a flag's choices from an Enum: one made of the names the library defines."""
    return StrEnum(name, [(n, n) for n in names])


Loss = _choices("Loss", LOSSES)
Attention = _choices("Attention", ATTENTION)
Precision = _choices("Precision", PRECISIONS)
Device = _choices("Device", DEVICES)

_LOSS_HELP = " or ".join(f"{name} ({loss.help})" for name, loss in LOSSES.items())
_ATTN_HELP = "; ".join(f"{name}: {mode.help}" for name, mode in ATTENTION.items())


def _names(text: str | None) -> tuple[str, ...] | None:
    return None if text is None else tuple(k.strip() for k in text.split(","))


def _opt(help: str, panel: str, **kw):
    return typer.Option(help=help, rich_help_panel=panel, **kw)


def _num(help: str, panel: str, **kw):
    """A float flag: NaN and infinities are refused as usage errors."""
    return _opt(help, panel, callback=finite, **kw)


@run_command("train")
def train(
    inputs: Annotated[
        list[str],
        typer.Argument(
            help="Training data: webdataset tar shards or JSONL with image paths (files, globs, "
            "brace ranges shards/{000..099}.tar, pipe:COMMAND).",
            show_default=False,
        ),
    ],
    output: Annotated[
        str,
        typer.Option(
            "--output",
            "-o",
            metavar="DIR",
            help="Checkpoints (step_*.pt, latest), the open_clip model files and loss.png.",
            rich_help_panel=_OUT,
        ),
    ],
    model: Annotated[
        str,
        _opt(
            "open_clip architecture (ViT-B-16, ViT-L-14, ViT-B-16-SigLIP, coca_ViT-B-32, ...) "
            "or a built-in tiny one: vecap-tiny, vecap-tiny-coca, vecap-tiny-sigmoid.",
            _MODEL,
        ),
    ] = "vecap-tiny",
    pretrained: Annotated[
        str | None,
        _opt("Start from this local checkpoint (open_clip state dict).", _MODEL, metavar="PATH"),
    ] = None,
    loss: Annotated[Loss, _opt(f"{_LOSS_HELP}; CoCa adds its caption loss.", _MODEL)] = "clip",
    attn: Annotated[Attention, _opt(f"{_ATTN_HELP}.", _MODEL)] = "auto",
    coca_caption_weight: Annotated[float, _num("CoCa caption loss weight.", _MODEL)] = 2.0,
    coca_contrastive_weight: Annotated[float, _num("CoCa contrastive loss weight.", _MODEL)] = 1.0,
    text_keys: Annotated[
        str | None,
        _opt(
            "Caption fields, comma-separated: one is drawn per sample and epoch as `vecap mix "
            "--policy random` draws it (default: text, else alt).",
            _DATA,
            show_default=False,
        ),
    ] = None,
    text_probs: Annotated[
        str | None,
        _opt("Probability of each --text-keys field (default: equal).", _DATA, show_default=False),
    ] = None,
    train_num_samples: Annotated[
        int | None,
        _opt("Samples per epoch (default: count the inputs once).", _DATA, show_default=False),
    ] = None,
    shuffle_buffer: Annotated[int, _opt("Shuffle buffer per data worker.", _DATA)] = 1000,
    workers: Annotated[int, _opt("Data loading processes per rank.", _DATA)] = 2,
    resample: Annotated[
        bool, _opt("Draw shards with replacement instead of splitting them.", _DATA)
    ] = False,
    batch_size: Annotated[int, _opt("Samples per step on each rank.", _OPT)] = 64,
    epochs: Annotated[int, _opt("Epochs of --train-num-samples each.", _OPT)] = 1,
    lr: Annotated[float, _num("Peak learning rate (AdamW).", _OPT)] = 5e-4,
    wd: Annotated[float, _num("Weight decay (not on gains, biases, logit_scale).", _OPT)] = 0.2,
    warmup: Annotated[int, _opt("Linear warmup steps, then cosine decay.", _OPT)] = 100,
    grad_clip_norm: Annotated[
        float | None, _num("Clip the gradient norm to this.", _OPT, show_default=False)
    ] = None,
    grad_checkpointing: Annotated[
        bool, _opt("Recompute activations in backward (less memory).", _OPT)
    ] = False,
    compile: Annotated[bool, _opt("torch.compile the model.", _OPT)] = False,
    precision: Annotated[
        Precision, _opt("auto: bf16 autocast on GPU, fp32 on CPU.", _OPT)
    ] = Precision.auto,
    device: Annotated[Device, _opt("auto: cuda when there is one.", _OPT)] = Device.auto,
    save_every: Annotated[
        int, _opt("Checkpoint every N steps (and at every epoch end).", _OUT)
    ] = 0,
    keep: Annotated[int, _opt("Keep the newest N checkpoints (0: all).", _OUT)] = 0,
    resume: Annotated[
        str | None,
        _opt(
            "Continue a run: 'latest' (the newest in -o; a fresh start when there is none) "
            "or a checkpoint path.",
            _OUT,
            show_default=False,
        ),
    ] = None,
    log: Annotated[
        str | None,
        _opt(
            "Write metrics as JSONL, one line per step.", _OUT, metavar="FILE", show_default=False
        ),
    ] = None,
    log_every: Annotated[
        int, _opt("Progress line every N steps when stderr is not a terminal.", _OUT)
    ] = 50,
    val: Annotated[
        list[str] | None,
        _opt("Held-out data for retrieval R@1/R@5 while training.", _OUT, show_default=False),
    ] = None,
    val_every: Annotated[int, _opt("Validate every N steps (0: each epoch end).", _OUT)] = 0,
    val_num_samples: Annotated[int, _opt("Validation samples used.", _OUT)] = 1000,
    *,
    opts: RunOptions,
) -> None:
    """Train a CLIP, SigLIP or CoCa model (open_clip) on record streams.

    Reads what `vecap mix` writes (or any JSONL / webdataset shards with a
    caption), writes open_clip-loadable checkpoints to -o DIR, resumes with
    --resume latest, and runs under torchrun or srun as one rank of many.
    Samples whose image does not decode are rejected, samples with no caption
    dropped; both are counted in the summary.
    """
    if "-" in inputs:
        raise typer.BadParameter(
            "train reads its data more than once: give files, not stdin", param_hint="INPUTS"
        )
    from vecap_cli.stream.sources import expand

    expand(inputs)  # a missing input fails here, in one line, before torch loads
    if val:
        expand(val)
    from vecap_cli.train.config import TrainConfig
    from vecap_cli.train.loop import train as run

    try:
        cfg = TrainConfig(
            inputs=tuple(inputs),
            output=output,
            text_keys=_names(text_keys),
            text_probs=floats(text_probs, "--text-probs"),
            train_num_samples=train_num_samples,
            shuffle_buffer=shuffle_buffer,
            workers=workers,
            resample=resample,
            model=model,
            pretrained=pretrained,
            loss=loss.value,
            attn=attn.value,
            caption_loss_weight=coca_caption_weight,
            contrastive_loss_weight=coca_contrastive_weight,
            batch_size=batch_size,
            epochs=epochs,
            lr=lr,
            wd=wd,
            warmup=warmup,
            grad_clip_norm=grad_clip_norm,
            grad_checkpointing=grad_checkpointing,
            compile=compile,
            precision=precision.value,
            device=device.value,
            save_every=save_every,
            keep=keep,
            resume=resume,
            log=log,
            log_every=log_every,
            val=tuple(val or ()),
            val_every=val_every,
            val_num_samples=val_num_samples,
            seed=opts.seed,
        )
    except ValueError as err:
        flag, _, why = str(err).partition(": ")
        raise typer.BadParameter(why, param_hint=flag) from None
    tally = run(cfg, opts)
    report(tally, opts)


def register(app) -> None:
    app.command("train")(train)
