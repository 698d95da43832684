"""vecap mix: choose the caption each sample trains on."""

from enum import StrEnum
from typing import Annotated

import typer

from vecap_cli.cli.options import floats, record_command, report
from vecap_cli.stream.runner import StreamOptions


class Policy(StrEnum):
    random = "random"
    all = "all"
    concat = "concat"
    first = "first"


@record_command("mix", workers=True)
def mix(
    policy: Annotated[
        Policy,
        typer.Option(
            help="random: draw one of --keys per sample and epoch; all: one sample per caption "
            "(keys suffixed _FIELD); concat: join them with --sep; first: the first one present."
        ),
    ] = Policy.random,
    keys: Annotated[
        str, typer.Option(help="Caption fields, comma-separated, in order.")
    ] = "alt,vecap",
    probs: Annotated[
        str | None,
        typer.Option(
            help="Probability of each key for --policy random, comma-separated (default: equal). "
            "A record lacking a key draws among the keys it has.",
            show_default=False,
        ),
    ] = None,
    epoch: Annotated[
        int, typer.Option(min=0, help="Epoch of the draw: each epoch draws anew.")
    ] = 0,
    sep: Annotated[str, typer.Option(help="Separator for --policy concat.")] = " ",
    *,
    opts: StreamOptions,
) -> None:
    """Mix AltText and rewritten captions into the `text` each sample trains on.

    Writes `text` (and the tar member `txt`), so the output trains as-is in
    open_clip's webdataset loader. Records with none of --keys are dropped
    under `no-caption`.
    """
    from functools import partial

    from vecap_cli.steps.mix import MixConfig
    from vecap_cli.steps.mix import mix as mix_stage
    from vecap_cli.stream.runner import run_stream

    try:
        config = MixConfig(
            policy=policy.value,
            keys=tuple(k.strip() for k in keys.split(",")),
            probs=floats(probs, "--probs"),
            seed=opts.seed,
            epoch=epoch,
            sep=sep,
        )
    except ValueError as err:
        raise typer.BadParameter(str(err)) from None
    tally = run_stream("mix", opts, partial(mix_stage, config=config), config)
    report(tally, opts)


def register(app) -> None:
    app.command("mix")(mix)
