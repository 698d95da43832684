"""vecap mix: choose the caption each sample trains on."""

from functools import partial
from typing import Annotated

import typer

from vecap_cli.cli.options import floats, one_of, record_command, report
from vecap_cli.steps.mix import POLICIES, PRESETS, MixConfig, preset_mix
from vecap_cli.steps.mix import mix as mix_stage
from vecap_cli.stream.runner import StreamOptions, run_stream


@record_command("mix", workers=True)
def mix(
    policy: Annotated[
        str,
        typer.Option(
            parser=one_of(POLICIES),
            metavar=f"<{'|'.join(POLICIES)}>",  # as typer writes a choice
            help="; ".join(f"{name}: {p.help}" for name, p in POLICIES.items()) + ".",
        ),
    ] = "random",
    keys: Annotated[
        str | None,
        typer.Option(
            help="Caption fields, comma-separated, in order (default: alt,vecap). A field "
            "holding a list (caption/rewrite --n K) offers each of its captions.",
            show_default=False,
        ),
    ] = None,
    probs: Annotated[
        str | None,
        typer.Option(
            help="Probability of each key for --policy random, comma-separated (default: equal). "
            "A record lacking a key draws among the keys it has.",
            show_default=False,
        ),
    ] = None,
    preset: Annotated[
        str | None,
        typer.Option(
            parser=one_of(PRESETS),
            metavar=f"<{'|'.join(PRESETS)}>",
            help="A published mix, setting --keys and --probs (not to be given with it): "
            + "; ".join(
                f"{name}: alt,vecap {','.join(map(str, p.probs))}, {p.help}"
                for name, p in PRESETS.items()
            )
            + ".",
            show_default=False,
        ),
    ] = None,
    epoch: Annotated[
        int, typer.Option(min=0, help="Epoch of the draw: each epoch draws anew.")
    ] = 0,
    sep: Annotated[str, typer.Option(help="Separator for --policy concat.")] = " ",
    online_curation: Annotated[
        bool,
        typer.Option(
            "--online-curation",
            help="Keep a record in --epoch with probability curate.p, drawn from "
            "hash(seed, key, epoch), as `vecap train --online-curation` does (MetaCLIP 1.2/2): "
            "each epoch a fresh balanced sample of a pool `vecap curate --keep-matched` wrote. "
            "Records not drawn are dropped under `online-curation`; records without "
            "curate.p are rejected under `no-curate-p`.",
        ),
    ] = False,
    *,
    opts: StreamOptions,
) -> None:
    """Mix AltText and rewritten captions into the `text` each sample trains on.

    Writes `text` (and the tar member `txt`), so the output trains as-is in
    open_clip's webdataset loader. Records with none of --keys are dropped
    under `no-caption`.
    """
    try:
        names = None if keys is None else tuple(k.strip() for k in keys.split(","))
        names, weights = preset_mix(preset, names, floats(probs, "--probs"), ("--keys", "--probs"))
        config = MixConfig(
            policy=policy,
            keys=names or MixConfig.keys,
            probs=weights,
            seed=opts.seed,
            epoch=epoch,
            sep=sep,
            online_curation=online_curation,
        )
    except ValueError as err:
        raise typer.BadParameter(str(err)) from None
    tally = run_stream("mix", opts, partial(mix_stage, config=config), config)
    report(tally, opts)


def register(app) -> None:
    app.command("mix")(mix)
