"""vecap train: CLIP, SigLIP or CoCa training of open_clip models on the fused core."""

from collections.abc import Iterable
from dataclasses import fields
from enum import Enum, StrEnum
from typing import Annotated

import typer

from vecap_cli.cli.options import RunOptions, finite, floats, one_of, report, run_command
from vecap_cli.steps.mix import PRESETS, preset_mix
from vecap_cli.train.attention import ATTENTION
from vecap_cli.train.config import DEVICES, PRECISIONS, TrainConfig
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


def _opt(help: str, panel: str, *names: str, **kw):
    return typer.Option(*names, help=help, rich_help_panel=panel, **kw)


def _num(help: str, panel: str, *names: str, **kw):
    """A float flag: NaN and infinities are refused as usage errors."""
    return _opt(help, panel, *names, callback=finite, **kw)


# Each parameter below is named as the TrainConfig field it sets (`_config` passes
# them through by name) and defaults to what that field defaults to.
_DEFAULT = TrainConfig(inputs=(), output="")


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
        _opt(
            "Checkpoints (step_*.pt, latest), the open_clip model files and loss.png.",
            _OUT,
            "--output",
            "-o",
            metavar="DIR",
        ),
    ],
    model: Annotated[
        str,
        _opt(
            "open_clip architecture (ViT-B-16, ViT-L-14, ViT-B-16-SigLIP, coca_ViT-B-32, ...) "
            "or a built-in tiny one: vecap-tiny, vecap-tiny-coca, vecap-tiny-sigmoid.",
            _MODEL,
        ),
    ] = _DEFAULT.model,
    pretrained: Annotated[
        str | None,
        _opt("Start from this local checkpoint (open_clip state dict).", _MODEL, metavar="PATH"),
    ] = _DEFAULT.pretrained,
    context_length: Annotated[
        int | None,
        _opt(
            "Text tokens per caption, for long (dense) captions (default: the model's own). "
            "A fresh model is built with that many positions; --pretrained weights with fewer "
            "are stretched Long-CLIP's way (the first 20 kept, the rest interpolated), with "
            "more truncated. Checkpoints record it: eval and filter score read it back.",
            _MODEL,
            show_default=False,
        ),
    ] = _DEFAULT.context_length,
    loss: Annotated[
        Loss, _opt(f"{_LOSS_HELP}; CoCa adds its caption loss.", _MODEL)
    ] = _DEFAULT.loss,
    attn: Annotated[Attention, _opt(f"{_ATTN_HELP}.", _MODEL)] = _DEFAULT.attn,
    caption_loss_weight: Annotated[
        float, _num("CoCa caption loss weight.", _MODEL, "--coca-caption-weight")
    ] = _DEFAULT.caption_loss_weight,
    contrastive_loss_weight: Annotated[
        float, _num("CoCa contrastive loss weight.", _MODEL, "--coca-contrastive-weight")
    ] = _DEFAULT.contrastive_loss_weight,
    distill: Annotated[
        bool,
        _opt(
            "MobileCLIP's distillation: the loss is (1 − λ) × contrastive + λ × the KL between "
            "the stored teacher's and the student's image-text similarity softmaxes over the "
            "batch (rows and columns). Reads the teacher embeddings `vecap embed` stores; each "
            "sample's image is cropped as the stored augmentation drawn for it, and its caption's "
            "teacher row is used. Records without them are rejected (no-teacher, bad-teacher).",
            _MODEL,
            "--distill",
        ),
    ] = _DEFAULT.distill,
    distill_weight: Annotated[
        float,
        _num(
            "λ of --distill (MobileCLIP's DataCompDR runs: 1, distillation alone).",
            _MODEL,
            "--distill-weight",
        ),
    ] = _DEFAULT.distill_weight,
    teacher_scale: Annotated[
        float,
        _num(
            "The teacher's logit scale under --distill (MobileCLIP's: 100).",
            _MODEL,
            "--teacher-scale",
        ),
    ] = _DEFAULT.teacher_scale,
    text_keys: Annotated[
        str | None,
        _opt(
            "Caption fields, comma-separated: one is drawn per sample and epoch as `vecap mix "
            "--policy random` draws it, among all captions of list-valued fields "
            "(default: text, else alt).",
            _DATA,
            show_default=False,
        ),
    ] = _DEFAULT.text_keys,
    text_probs: Annotated[
        str | None,
        _opt("Probability of each --text-keys field (default: equal).", _DATA, show_default=False),
    ] = _DEFAULT.text_probs,
    preset: Annotated[
        str | None,
        _opt(
            "A published caption mix, setting --text-keys and --text-probs as `vecap mix "
            "--preset` sets its --keys and --probs (not to be given with them): "
            + ", ".join(f"{name} ({','.join(map(str, p.probs))})" for name, p in PRESETS.items())
            + " of alt,vecap.",
            _DATA,
            parser=one_of(PRESETS),
            metavar=f"<{'|'.join(PRESETS)}>",
            show_default=False,
        ),
    ] = None,
    positives: Annotated[
        int,
        _opt(
            "Captions per image in a batch (K): each step trains B images against B·K texts "
            "with the multi-positive loss, all K counting as positives. The K are drawn "
            "without replacement per sample and epoch from all captions of --text-keys "
            "(default: text and alt); a record with fewer repeats them, counted in "
            "repeated-captions. 1: one caption, as ever. Not with CoCa.",
            _DATA,
            min=1,
        ),
    ] = _DEFAULT.positives,
    train_num_samples: Annotated[
        int | None,
        _opt("Samples per epoch (default: count the inputs once).", _DATA, show_default=False),
    ] = _DEFAULT.train_num_samples,
    shuffle_buffer: Annotated[
        int, _opt("Shuffle buffer per data worker.", _DATA)
    ] = _DEFAULT.shuffle_buffer,
    workers: Annotated[int, _opt("Data loading processes per rank.", _DATA)] = _DEFAULT.workers,
    resample: Annotated[
        bool, _opt("Draw shards with replacement instead of splitting them.", _DATA)
    ] = _DEFAULT.resample,
    online_curation: Annotated[
        bool,
        _opt(
            "Keep each record in an epoch with probability curate.p, drawn from "
            "hash(seed, key, epoch) (MetaCLIP 1.2/2's online curation): each epoch trains on "
            "a fresh balanced sample of the matched pool `vecap curate --keep-matched` "
            "writes; an epoch defaults to the sum of curate.p samples, and the log says "
            "how many each epoch kept. Records without curate.p are rejected (no-curate-p).",
            _DATA,
            "--online-curation",
        ),
    ] = _DEFAULT.online_curation,
    batch_size: Annotated[int, _opt("Samples per step on each rank.", _OPT)] = _DEFAULT.batch_size,
    epochs: Annotated[int, _opt("Epochs of --train-num-samples each.", _OPT)] = _DEFAULT.epochs,
    lr: Annotated[float, _num("Peak learning rate (AdamW).", _OPT)] = _DEFAULT.lr,
    wd: Annotated[
        float, _num("Weight decay (not on gains, biases, logit_scale).", _OPT)
    ] = _DEFAULT.wd,
    warmup: Annotated[int, _opt("Linear warmup steps, then cosine decay.", _OPT)] = _DEFAULT.warmup,
    grad_clip_norm: Annotated[
        float | None, _num("Clip the gradient norm to this.", _OPT, show_default=False)
    ] = _DEFAULT.grad_clip_norm,
    grad_checkpointing: Annotated[
        bool, _opt("Recompute activations in backward (less memory).", _OPT)
    ] = _DEFAULT.grad_checkpointing,
    compile: Annotated[bool, _opt("torch.compile the model.", _OPT)] = _DEFAULT.compile,
    precision: Annotated[
        Precision, _opt("auto: bf16 autocast on GPU, fp32 on CPU.", _OPT)
    ] = _DEFAULT.precision,
    device: Annotated[Device, _opt("auto: cuda when there is one.", _OPT)] = _DEFAULT.device,
    save_every: Annotated[
        int, _opt("Checkpoint every N steps (and at every epoch end).", _OUT)
    ] = _DEFAULT.save_every,
    keep: Annotated[int, _opt("Keep the newest N checkpoints (0: all).", _OUT)] = _DEFAULT.keep,
    resume: Annotated[
        str | None,
        _opt(
            "Continue a run: 'latest' (the newest in -o; a fresh start when there is none) "
            "or a checkpoint path.",
            _OUT,
            show_default=False,
        ),
    ] = _DEFAULT.resume,
    log: Annotated[
        str | None,
        _opt(
            "Write metrics as JSONL, one line per step.", _OUT, metavar="FILE", show_default=False
        ),
    ] = _DEFAULT.log,
    log_every: Annotated[
        int, _opt("Progress line every N steps when stderr is not a terminal.", _OUT)
    ] = _DEFAULT.log_every,
    val: Annotated[
        list[str] | None,
        _opt("Held-out data for retrieval R@1/R@5 while training.", _OUT, show_default=False),
    ] = None,
    val_every: Annotated[
        int, _opt("Validate every N steps (0: each epoch end).", _OUT)
    ] = _DEFAULT.val_every,
    val_num_samples: Annotated[
        int, _opt("Validation samples used.", _OUT)
    ] = _DEFAULT.val_num_samples,
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
    flags = dict(locals())  # the parameters above, by the names TrainConfig gives them
    if "-" in inputs:
        raise typer.BadParameter(
            "train reads its data more than once: give files, not stdin", param_hint="INPUTS"
        )
    from vecap_cli.stream.sources import expand

    expand(inputs)  # a missing input fails here, in one line, before torch loads
    if val:
        expand(val)
    cfg = _config(flags, opts.seed)
    from vecap_cli.train.loop import train as run

    report(run(cfg, opts), opts)


def _config(flags: dict, seed: int) -> TrainConfig:
    """The flags as a TrainConfig, each to the field of its name, converted here; a
    ValueError('--flag: why') from the config's checks is a usage error naming the flag."""
    values = {f.name: _plain(flags[f.name]) for f in fields(TrainConfig) if f.name in flags}
    keys, probs = _names(flags["text_keys"]), floats(flags["text_probs"], "--text-probs")
    values.update(val=values["val"] or (), seed=seed)
    try:
        values["text_keys"], values["text_probs"] = preset_mix(
            flags["preset"], keys, probs, ("--text-keys", "--text-probs")
        )
        return TrainConfig(**values)
    except ValueError as err:
        flag, _, why = str(err).partition(": ")
        raise typer.BadParameter(why, param_hint=flag) from None


def _plain(value):
    """A flag's value as the config holds it: a choice as its name, a list as a tuple."""
    if isinstance(value, Enum):
        return value.value
    return tuple(value) if isinstance(value, list) else value


def _names(text: str | None) -> tuple[str, ...] | None:
    return None if text is None else tuple(k.strip() for k in text.split(","))


def register(app) -> None:
    app.command("train")(train)
