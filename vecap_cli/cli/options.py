"""The flags every command shares, declared once.

`@record_command` adds INPUT... and the stream flags to a command's signature and
hands the command one `StreamOptions`; `@run_command` adds only the flags that
are not about record streams (train, eval). Both make the flags read the same
everywhere, help text included.
"""

import functools
import inspect
import math
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import asdict
from typing import Annotated

import typer

from vecap_cli import placement
from vecap_cli.stream.images import DEFAULT_LIMITS, ImageLimits
from vecap_cli.stream.progress import PROGRESS_ENV
from vecap_cli.stream.runner import RunOptions, StreamOptions, output_problem

_RUN = "Run"
_OUT = "Output"

Inputs = Annotated[
    list[str] | None,
    typer.Argument(
        help="JSONL (.jsonl, .jsonl.gz) or webdataset tar inputs: files, globs, "
        "brace ranges (shards/{000..099}.tar), pipe:COMMAND, or - for stdin.",
        show_default=False,
    ),
]
Output = Annotated[
    str,
    typer.Option(
        "--output",
        "-o",
        metavar="PATH",
        help="- for stdout, a file, or numbered shards: out/%06d.tar (or out/{shard}.tar).",
        rich_help_panel=_OUT,
    ),
]
Format = Annotated[
    str | None,
    typer.Option(
        metavar="jsonl|tar",
        help="jsonl or tar; default: from the output name, else the input's carrier.",
        rich_help_panel=_OUT,
        show_default=False,
    ),
]
ShardSize = Annotated[
    int, typer.Option(min=1, help="Samples per output shard.", rich_help_panel=_OUT)
]
Resume = Annotated[
    bool,
    typer.Option("--resume", help="Skip the shards a previous run finished.", rich_help_panel=_OUT),
]
ImagesDir = Annotated[
    str | None,
    typer.Option(
        metavar="DIR",
        help="Where JSONL output writes the images of tar input.",
        rich_help_panel=_OUT,
        show_default=False,
    ),
]
Stats = Annotated[
    str | None,
    typer.Option(
        metavar="FILE.json",
        help="Write the counts (in, out, dropped and rejected per rule) as JSON.",
        rich_help_panel=_RUN,
        show_default=False,
    ),
]
Rejects = Annotated[
    str | None,
    typer.Option(
        metavar="FILE.jsonl",
        help="Write each rejected record, with its reason, as JSONL.",
        rich_help_panel=_RUN,
        show_default=False,
    ),
]
Strict = Annotated[
    bool, typer.Option("--strict", help="Stop at the first rejected record.", rich_help_panel=_RUN)
]
Seed = Annotated[
    int,
    typer.Option(help="Seed of every random choice, with each record's key.", rich_help_panel=_RUN),
]
Rank = Annotated[
    int | None,
    typer.Option(
        min=0,
        help="This run's rank; default: $RANK, $SLURM_PROCID, else 0.",
        rich_help_panel=_RUN,
        show_default=False,
    ),
]
WorldSize = Annotated[
    int | None,
    typer.Option(
        min=1,
        help="Number of ranks splitting the input; default: $WORLD_SIZE, $SLURM_NTASKS, else 1.",
        rich_help_panel=_RUN,
        show_default=False,
    ),
]
Quiet = Annotated[
    bool,
    typer.Option(
        "--quiet", "-q", help="No progress and no summary on stderr.", rich_help_panel=_RUN
    ),
]
MaxImageBytes = Annotated[
    int,
    typer.Option(
        min=1,
        metavar="BYTES",
        help="Refuse (reject, image-too-large) an image file or member over this many bytes.",
        rich_help_panel=_RUN,
    ),
]
MaxPixels = Annotated[
    int,
    typer.Option(
        min=1,
        metavar="PIXELS",
        help="Refuse (reject, image-too-many-pixels) an image whose header claims more "
        "pixels, before decoding it; a JPEG is first decoded at 1/2..1/8 scale if that fits.",
        rich_help_panel=_RUN,
    ),
]

Workers = Annotated[
    str,
    typer.Option(
        metavar="N|auto",
        help="Processes running the step on this machine: N, or auto for the usable cores; "
        "the output is the same as with one.",
        rich_help_panel=_RUN,
    ),
]

_RUN_FLAGS = {
    "stats": (Stats, None),
    "rejects": (Rejects, None),
    "strict": (Strict, False),
    "seed": (Seed, 0),
    "rank": (Rank, None),
    "world_size": (WorldSize, None),
    "quiet": (Quiet, False),
}
_IMAGE_FLAGS = {  # on every command that opens images (curate count opens none)
    "max_image_bytes": (MaxImageBytes, DEFAULT_LIMITS.max_bytes),
    "max_pixels": (MaxPixels, DEFAULT_LIMITS.max_pixels),
}
_STREAM_FLAGS = {
    "inputs": (Inputs, None),
    "output": (Output, "-"),
    "format": (Format, None),
    "shard_size": (ShardSize, 10_000),
    "resume": (Resume, False),
    "images_dir": (ImagesDir, None),
    **_RUN_FLAGS,
    **_IMAGE_FLAGS,
}


_WORKERS_FLAG = {"workers": (Workers, "1")}  # on the commands that can use it


def resolve_workers(value: str) -> int:
    """--workers: a count, or `auto` for the cores this process may run on."""
    if value == "auto":
        return len(os.sched_getaffinity(0))
    if not value.isdigit() or int(value) < 1:
        raise typer.BadParameter(
            f"expected a count of 1 or more, or auto; got '{value}'", param_hint="--workers"
        )
    return int(value)


def resolve_placement(rank: int | None, world_size: int | None) -> placement.Placement:
    """--rank/--world-size, else torchrun's environment, else Slurm's, else one process:
    read here, once, for everything below."""
    try:
        return placement.resolve(rank, world_size, os.environ)
    except ValueError as err:
        raise typer.BadParameter(str(err), param_hint="--rank") from None


def log(quiet: bool, command: str):
    def write(line: str) -> None:
        if not quiet:
            print(f"vecap {command}: {line}", file=sys.stderr)

    return write


def _with_flags(flags: dict, build, command_name: str):
    """Append `flags` to the command's signature; pass their values as `opts=build(...)`."""

    def decorate(fn):
        sig = inspect.signature(fn)
        own = [p for p in sig.parameters.values() if p.name != "opts"]
        added = [
            inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=ann, default=default)
            for name, (ann, default) in flags.items()
        ]

        @functools.wraps(fn)
        def command(**kwargs):
            values = {name: kwargs.pop(name) for name in flags}
            return fn(**kwargs, opts=build(command_name, **values))

        command.__signature__ = sig.replace(parameters=own + added)
        command.__annotations__ = {p.name: p.annotation for p in own + added}
        return command

    return decorate


def _limits(max_image_bytes: int | None, max_pixels: int | None) -> ImageLimits:
    return ImageLimits(
        max_image_bytes or DEFAULT_LIMITS.max_bytes, max_pixels or DEFAULT_LIMITS.max_pixels
    )


def _run_options(
    command: str,
    *,
    rank,
    world_size,
    quiet,
    max_image_bytes=None,
    max_pixels=None,
    workers="1",
    **values,
) -> RunOptions:
    return RunOptions(
        **asdict(resolve_placement(rank, world_size)),
        quiet=quiet,
        log=log(quiet, command),
        image_limits=_limits(max_image_bytes, max_pixels),
        workers=resolve_workers(workers),
        progress=os.environ.get(PROGRESS_ENV) or None,
        **values,
    )


def _stream_options(
    command: str,
    *,
    inputs,
    rank,
    world_size,
    quiet,
    max_image_bytes,
    max_pixels,
    workers="1",
    **values,
) -> StreamOptions:
    if values["format"] not in (None, "jsonl", "tar"):
        raise typer.BadParameter("choose jsonl or tar", param_hint="--format")
    opts = StreamOptions(
        inputs=tuple(inputs or ["-"]),
        **asdict(resolve_placement(rank, world_size)),
        quiet=quiet,
        log=log(quiet, command),
        image_limits=_limits(max_image_bytes, max_pixels),
        workers=resolve_workers(workers),
        progress=os.environ.get(PROGRESS_ENV) or None,
        **values,
    )
    problem = output_problem(opts)
    if problem:
        raise typer.BadParameter(problem)
    return opts


def _without(flags: dict, omit: tuple[str, ...]) -> dict:
    unknown = set(omit) - set(flags)
    if unknown:
        raise ValueError(f"no shared flag named {sorted(unknown)}")
    return {name: flag for name, flag in flags.items() if name not in omit}


def record_command(name: str, *, omit: tuple[str, ...] = (), workers: bool = False):
    """For commands that read and write records: INPUT..., -o and the stream flags,
    less the shared flags named in `omit` (their RunOptions field keeps its default);
    `workers`: --workers too (a step whose stage runs in worker processes)."""
    flags = {**_STREAM_FLAGS, **(_WORKERS_FLAG if workers else {})}
    return _with_flags(_without(flags, omit), _stream_options, name)


def run_command(
    name: str, *, omit: tuple[str, ...] = (), images: bool = True, workers: bool = False
):
    """For commands that do not stream records (train, eval, curate count): the run
    flags (--stats, --seed, --rank, --quiet, ...) less `omit`; `images`: the image
    limits too; `workers`: --workers too."""
    flags = {**_RUN_FLAGS, **(_IMAGE_FLAGS if images else {}), **(_WORKERS_FLAG if workers else {})}
    return _with_flags(_without(flags, omit), _run_options, name)


def floats(text: str | None, flag: str) -> tuple[float, ...] | None:
    """A comma-separated list of numbers (--probs 0.5,0.5), or a usage error naming `flag`."""
    if text is None:
        return None
    try:
        values = tuple(float(x) for x in text.split(","))
    except ValueError:
        raise typer.BadParameter(
            f"expected comma-separated numbers, got '{text}'", param_hint=flag
        ) from None
    if not all(map(math.isfinite, values)):
        raise typer.BadParameter(f"expected finite numbers, got '{text}'", param_hint=flag)
    return values


def one_of(registry: Mapping[str, object]) -> Callable[[str], str]:
    """A typer `parser` for a flag that names an entry of `registry`, checked when the
    command line is read: an entry registered after the CLI loaded is a choice too."""

    def parse(name: str) -> str:
        if name not in registry:
            raise typer.BadParameter(f"'{name}' is not one of {', '.join(map(repr, registry))}.")
        return name

    return parse


def finite(value: float | None) -> float | None:
    """A typer callback: NaN and infinities are usage errors, not numbers to train with."""
    if value is not None and not math.isfinite(value):
        raise typer.BadParameter(f"expected a finite number, got {value}")
    return value


def report(tally, opts: RunOptions) -> None:
    """The closing summary: one line on stderr."""
    opts.log(tally.summary())
