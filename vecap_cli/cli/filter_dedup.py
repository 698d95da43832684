"""vecap filter dedup: drop exact, perceptual and semantic image duplicates."""

from typing import Annotated

import typer

from vecap_cli.cli.models import (
    image_batch_option,
    model_option,
    pretrained_option,
    tokenizer_option,
)
from vecap_cli.cli.options import finite, record_command, report
from vecap_cli.stream.runner import StreamOptions

_RULES = "Rules"
_MODEL = "Model (--semantic)"


@record_command("filter dedup")
def dedup(
    exact: Annotated[
        bool,
        typer.Option(
            "--exact",
            help="Drop records whose decoded pixels equal a kept record's (a content hash "
            "of the RGB pixels and size: a re-encoding, or other metadata, still matches), "
            "under `duplicate-exact`.",
            rich_help_panel=_RULES,
        ),
    ] = False,
    phash_distance: Annotated[
        int | None,
        typer.Option(
            min=0,
            max=63,
            metavar="D",
            help="Drop records whose 64-bit pHash (imagehash) is at most D bits from a "
            "kept record's, under `duplicate-phash`: resizes, re-encodings, small crops "
            "(4-10 is usual).",
            rich_help_panel=_RULES,
            show_default=False,
        ),
    ] = None,
    semantic: Annotated[
        float | None,
        typer.Option(
            "--semantic",
            metavar="EPS",
            callback=finite,
            help="SemDeDup with --model: k-means over the image embeddings, then drop a "
            "record whose cosine to a kept record of its cluster is above 1 - EPS, under "
            "`duplicate-semantic`.",
            rich_help_panel=_RULES,
            show_default=False,
        ),
    ] = None,
    clusters: Annotated[
        int | None,
        typer.Option(
            min=1,
            metavar="K",
            help="k-means clusters for --semantic; default: sqrt(N) of the N images.",
            rich_help_panel=_RULES,
            show_default=False,
        ),
    ] = None,
    model: Annotated[str | None, model_option(_MODEL)] = None,
    pretrained: Annotated[str | None, pretrained_option(_MODEL)] = None,
    tokenizer: Annotated[str | None, tokenizer_option(_MODEL)] = None,
    device: Annotated[
        str | None,
        typer.Option(
            help="torch device; default: cuda when there is one, else cpu.",
            rich_help_panel=_MODEL,
            show_default=False,
        ),
    ] = None,
    batch_size: Annotated[int, image_batch_option(_MODEL)] = 64,
    threads: Annotated[int, typer.Option(min=1, help="Image-decoding threads.")] = 4,
    *,
    opts: StreamOptions,
) -> None:
    """Drop duplicate images: exact, perceptual (pHash) and semantic (SemDeDup).

    Reads the input twice: a survey decodes every image once and keeps its
    hashes (8 bytes of pHash, 16 of pixel hash) and, for --semantic, its
    embedding; the rules decide, in order (exact, pHash, semantic, each over the
    records the rules before kept); then the records are read again and the
    kept ones written. Of duplicates, the record with the higher
    filter.clip_score survives (`vecap filter score` writes it; a scored record
    beats an unscored one), else the one with the lower key. With --rejects,
    each dropped duplicate is written there too, with `"dropped": true` and
    `duplicate_of`, the kept record's key.

    Scale: there is no --workers; the survey decodes in --threads threads of
    one process. With --world-size, every rank surveys the whole input (decodes
    and hashes every image, and embeds it for --semantic: ranks exchange
    nothing, so each reaches the same decisions) and then writes only its
    share: the shares together are one process's output. Ranks split the
    writing, not the survey: more ranks do not make the survey faster.
    """
    from vecap_cli.steps.filter.dedup import DedupConfig
    from vecap_cli.steps.filter.dedup import dedup as run

    try:
        config = DedupConfig(exact, phash_distance, semantic, clusters, opts.seed, threads)
    except ValueError as err:
        raise typer.BadParameter(str(err)) from None
    if (semantic is None) != (model is None):
        flag = "--model" if semantic is None else "--semantic"
        need = "--semantic" if semantic is None else "--model"
        raise typer.BadParameter(f"goes with {need}", param_hint=flag)
    embedder = None
    if model is not None:
        from vecap_cli.steps.filter.semantic import Embedder

        embedder = Embedder(
            model, pretrained, tokenizer, device, batch_size, opts, opts.seed, opts.log
        )
    report(run(opts, config, embedder), opts)


def register(group: typer.Typer) -> None:
    group.command("dedup")(dedup)
