"""vecap embed: store a teacher's image and caption embeddings beside every record
(MobileCLIP's reinforced data), for `vecap train --distill`."""

from typing import Annotated

import typer

from vecap_cli.cli.models import MODEL, Tokenizer, device_option, image_batch_option, model_option
from vecap_cli.cli.options import one_of, record_command, report
from vecap_cli.stream.runner import StreamOptions
from vecap_cli.stream.teacher import ENSEMBLES, field_ok

SUMMARY = (
    "Store teacher embeddings of augmented images and captions (MobileCLIP's reinforced data)."
)


def _names(values: list[str] | None) -> list[str]:
    """Repeated flags and comma lists, as one list."""
    return [v.strip() for value in values or () for v in value.split(",") if v.strip()]


def _text_keys(value: str) -> str:
    keys = _names([value])
    bad = [k for k in keys if not field_ok(k)]
    if bad or not keys:
        raise typer.BadParameter(
            f"'{bad[0] if bad else value}' cannot name a member teacher.FIELD.npy: "
            "fields of lower-case letters, digits, _ and -, not 'img'"
        )
    if len(set(keys)) < len(keys):
        raise typer.BadParameter(f"'{value}' names a field twice")
    return value


@record_command("embed")
def embed(
    model: Annotated[
        list[str],
        typer.Option(
            metavar="M",
            help=model_option().help + " Several (repeated or comma-separated) make an "
            "ensemble (--ensemble).",
            rich_help_panel=MODEL,
            show_default=False,
        ),
    ],
    pretrained: Annotated[
        list[str] | None,
        typer.Option(
            metavar="PATH",
            help="open_clip/vecap checkpoint for each --model ARCH, in the same order "
            "(repeated or comma-separated; '-' for a model that needs none).",
            rich_help_panel=MODEL,
            show_default=False,
        ),
    ] = None,
    tokenizer: Tokenizer = None,
    ensemble: Annotated[
        str,
        typer.Option(
            parser=one_of(dict.fromkeys(ENSEMBLES)),
            metavar=f"<{'|'.join(ENSEMBLES)}>",
            help="With several --model: concat joins the teachers' normalized embeddings "
            "(MobileCLIP's DataCompDR), mean averages them (one embedding size); then "
            "normalizes.",
            rich_help_panel=MODEL,
        ),
    ] = "concat",
    augmentations: Annotated[
        int,
        typer.Option(
            "--augmentations",
            "-k",
            min=1,
            max=1024,
            metavar="K",
            help="Augmented views of each image embedded: view k is the crop and flip drawn "
            "from (--seed, key, k), which train --distill draws again (DataCompDR: 30 "
            "for 12M, 10 for 1B).",
        ),
    ] = 10,
    text_keys: Annotated[
        str,
        typer.Option(
            callback=_text_keys,
            help="Caption fields embedded, comma-separated; a field holding a list "
            "(caption --n K) gives a row per caption. A field a record lacks is left out.",
        ),
    ] = "alt,vec,vecap",
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite",
            help="Replace the teacher embeddings a record already has; without it, such a "
            "record is rejected, `has-teacher`.",
        ),
    ] = False,
    batch_size: Annotated[int, image_batch_option()] = 64,
    device: Annotated[str, device_option(MODEL)] = "auto",
    decode_threads: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="Threads decoding and augmenting images ahead of the model (default: up "
            "to 4; 0: inline).",
            rich_help_panel=MODEL,
            show_default=False,
        ),
    ] = None,
    *,
    opts: StreamOptions,
) -> None:
    """Store a teacher's embeddings of each record's image under K augmentations and
    of its captions, as tar members beside the record.

    KEY.teacher.img.npy holds K float16 rows, the L2-normalized embeddings of the
    image's K augmented views; KEY.teacher.FIELD.npy one row per caption of each
    --text-keys field; the record's `teacher` names them, with K, the size, the
    seed, the models and the ensemble. The models load and embed as in `vecap
    eval`. The output is a tar (members need one): JSONL input takes -o out.tar
    or --format tar.

    A record whose image cannot be read is rejected (image-missing,
    image-too-large, image-too-many-pixels, bad-image); one that already has
    teacher embeddings is rejected, `has-teacher`, unless --overwrite. The model
    runs in this process alone: there is no --workers; split the input over ranks.
    """
    from functools import partial

    from vecap_cli.steps.embed import ClipTeacher, EmbedConfig
    from vecap_cli.steps.embed import embed as embed_stage
    from vecap_cli.steps.filter.score import default_threads
    from vecap_cli.stream.runner import run_stream

    _check_tar_output(opts)
    config = EmbedConfig(
        models=_models(model, pretrained),
        tokenizer=tokenizer,
        text_keys=tuple(_names([text_keys])),
        augmentations=augmentations,
        ensemble=ensemble,
        seed=opts.seed,
        overwrite=overwrite,
        batch_size=batch_size,
        threads=default_threads() if decode_threads is None else decode_threads,
        device=device,
        image_limits=opts.image_limits,
    )
    load = partial(ClipTeacher, config, opts, opts.log)
    stage = partial(embed_stage, config=config, load=load)
    report(run_stream("embed", opts, stage, config.identity()), opts)


def _models(model: list[str], pretrained: list[str] | None) -> tuple:
    models, weights = _names(model), _names(pretrained)
    if not models:
        raise typer.BadParameter("name a model", param_hint="--model")
    if weights and len(weights) != len(models):
        raise typer.BadParameter(
            f"{len(weights)} for {len(models)} --model: give one per model, '-' for none",
            param_hint="--pretrained",
        )
    weights = weights or ["-"] * len(models)
    return tuple((m, None if p == "-" else p) for m, p in zip(models, weights, strict=True))


def _check_tar_output(opts: StreamOptions) -> None:
    """The embeddings are tar members: the output must be a tar. It is what --format
    says, else what -o's name says, else the input's carrier."""
    from vecap_cli.stream.sources import carrier_from_name, expand

    out = opts.format or carrier_from_name(opts.output)
    if out is None:
        carriers = {carrier_from_name(name) for name in expand(opts.inputs)}
        out = "jsonl" if "jsonl" in carriers else "tar" if carriers == {"tar"} else None
    if out != "tar":  # stdin to stdout: say --format tar
        raise typer.BadParameter(
            "the embeddings are tar members: write a tar (-o out.tar, -o 'out/%06d.tar' "
            "or --format tar)",
            param_hint="-o/--format",
        )


def register(app: typer.Typer) -> None:
    app.command("embed", short_help=SUMMARY)(embed)
