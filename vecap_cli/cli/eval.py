"""vecap eval: zero-shot classification and image-text retrieval, clip_benchmark's numbers.

vecap eval [run] INPUT... --task T --model M    evaluate (the default command)
vecap eval compare A.json B.json...             results side by side (alias: --compare)
"""

from enum import StrEnum
from typing import Annotated, ClassVar

import typer

from vecap_cli.cli.groups import DefaultCommandGroup
from vecap_cli.cli.models import ContextLength, Pretrained, Tokenizer, model_option
from vecap_cli.cli.options import RunOptions, report, run_command

SUMMARY = "Evaluate a CLIP model: zero-shot classification or image-text retrieval."
_DATA = "Dataset"


class _EvalGroup(DefaultCommandGroup):
    aliases: ClassVar[dict[str, str]] = {"--compare": "compare"}  # what compare was first


eval_app = typer.Typer(
    cls=_EvalGroup,
    no_args_is_help=True,
    help=f"{SUMMARY}\n\n"
    "`vecap eval INPUT... --task T --model M` runs `vecap eval run`; `vecap eval compare "
    "A.json B.json` (or `vecap eval --compare A.json B.json`) prints results side by side.\n\n"
    "See `vecap eval COMMAND --help` for each command's flags.",
)


class Task(StrEnum):
    zeroshot = "zeroshot"
    retrieval = "retrieval"


class DataFormat(StrEnum):
    auto = "auto"
    stream = "stream"
    folder = "folder"
    coco = "coco"
    csv = "csv"


def _ks(text: str) -> tuple[int, ...]:
    try:
        ks = tuple(int(k) for k in text.split(","))
    except ValueError:
        ks = ()
    if not ks or min(ks) < 1:
        raise typer.BadParameter(f"expected positive integers like 1,5,10, got '{text}'")
    return ks


@eval_app.command("run")
@run_command("eval")
def run(
    task: Annotated[
        Task,
        typer.Option(
            help="zeroshot: classification by class names × prompt templates (top-1, top-5, "
            "mean per-class recall); retrieval: image→text and text→image recall@k.",
            show_default=False,
        ),
    ],
    model: Annotated[str, model_option()],
    inputs: Annotated[
        list[str] | None,
        typer.Argument(
            help="The dataset: webdataset shards or JSONL (files, globs, {000..009} ranges, "
            "pipe:CMD, -), an image-folder tree (a class per folder), COCO caption JSON or "
            "Karpathy's dataset_*.json, or an image,caption CSV.",
            show_default=False,
        ),
    ] = None,
    pretrained: Pretrained = None,
    tokenizer: Tokenizer = None,
    context_length: ContextLength = None,
    output: Annotated[
        str,
        typer.Option(
            "--output",
            "-o",
            metavar="PATH",
            help="Where the result JSON goes (clip_benchmark's, for `clip_benchmark build`); "
            "- for stdout.",
        ),
    ] = "-",
    data_format: Annotated[
        DataFormat,
        typer.Option(
            "--data-format",
            help="How to read INPUT; auto: a directory is a folder tree, .csv a CSV, "
            ".json with 'images' COCO/Karpathy, anything else webdataset/JSONL.",
            rich_help_panel=_DATA,
        ),
    ] = DataFormat.auto,
    image_root: Annotated[
        str | None,
        typer.Option(
            metavar="DIR",
            help="Where the images of a CSV or COCO JSON are; default: the file's directory.",
            rich_help_panel=_DATA,
            show_default=False,
        ),
    ] = None,
    split: Annotated[
        str,
        typer.Option(
            help="Split of Karpathy's dataset_*.json to evaluate (or 'all').",
            rich_help_panel=_DATA,
        ),
    ] = "test",
    dataset_name: Annotated[
        str | None,
        typer.Option(
            help="The dataset's name in the result; default: INPUT as given.",
            rich_help_panel=_DATA,
            show_default=False,
        ),
    ] = None,
    classnames: Annotated[
        str | None,
        typer.Option(
            metavar="FILE|imagenet1k",
            help="Class names, one per line (or a JSON list), in class-index order; "
            "default: the folder names of an image-folder tree.",
            rich_help_panel=_DATA,
            show_default=False,
        ),
    ] = None,
    templates: Annotated[
        str,
        typer.Option(
            metavar="FILE|openai|simple",
            help="Prompt templates with {c} for the class name, one per line (or JSON: a list, "
            "or an object of prompts per class name); openai: CLIP's 80 ImageNet templates.",
            rich_help_panel=_DATA,
        ),
    ] = "openai",
    recall_k: Annotated[
        str, typer.Option(metavar="K,K,...", help="The k of retrieval recall@k.")
    ] = "1,5,10",
    batch_size: Annotated[
        int, typer.Option(min=1, help="Images (or texts) per forward pass.")
    ] = 64,
    device: Annotated[
        str | None,
        typer.Option(
            help="torch device; default: cuda when there is one, else cpu.", show_default=False
        ),
    ] = None,
    amp: Annotated[bool, typer.Option(help="Mixed precision on GPU (CPU runs fp32).")] = True,
    workers: Annotated[int, typer.Option(min=1, help="Image-decoding threads.")] = 4,
    *,
    opts: RunOptions,
) -> None:
    """Evaluate a model on a dataset (the default command).

    Metrics are clip_benchmark's, to the digit: retrieval R@k counts an image
    as found when any of its captions is in the top k. The result is
    clip_benchmark's result JSON (dataset, model, pretrained, task, metrics,
    language; NaN where a metric is undefined), which `clip_benchmark build`
    reads as it is, on stdout or -o; a table goes to stderr, after one line
    naming the image preprocessing that runs. Records without a usable image,
    caption or class are rejected and counted. Under torchrun, each rank
    embeds its share and rank 0 reports.
    """
    from vecap_cli.eval.data import DataSpec
    from vecap_cli.eval.run import EvalConfig, run_eval
    from vecap_cli.stream.sinks import OutputFile

    config = EvalConfig(
        task=task.value,
        data=DataSpec(tuple(inputs or ["-"]), data_format.value, image_root, split),
        model=model,
        pretrained=pretrained,
        tokenizer=tokenizer,
        context_length=context_length,
        classnames=classnames,
        templates=templates,
        ks=_ks(recall_k),
        batch_size=batch_size,
        device=device,
        amp=amp,
        workers=workers,
        dataset_name=dataset_name,
    )
    # opened before the work, so an unwritable path fails at once
    sink = OutputFile(output) if opts.rank == 0 else None
    try:
        result, tally, main = run_eval(config, opts)
    except BaseException:
        if sink:
            sink.abandon()
        raise
    if not main:
        return
    from vecap_cli.eval.report import result_json, result_table

    sink.raw.write(result_json(result))
    sink.commit()
    if not opts.quiet:
        from rich.console import Console

        Console(stderr=True).print(result_table(result))
    report(tally, opts)


@eval_app.command("compare")
def compare(
    results: Annotated[
        list[str],
        typer.Argument(
            metavar="RESULT.json",
            help="Result files: vecap eval's or clip_benchmark's (one JSON object, a list, "
            "or JSON lines).",
            show_default=False,
        ),
    ],
) -> None:
    """Print result files side by side, with deltas to the first (alias: --compare).

    Rows pair by dataset and task, so give `vecap eval --dataset-name` to line
    runs up; clip_benchmark's `wds/NAME` is NAME. The table goes to stdout.
    """
    from rich.console import Console

    from vecap_cli.eval.report import compare_table, load_results

    table = compare_table(load_results(results))
    console = Console()
    if not console.is_terminal:  # a file or a pipe: as wide as the table, not 80 columns
        # measured on a console wide enough for it: measuring on this one caps it at 80
        width = Console(width=100_000).measure(table).maximum
        console = Console(width=width)
    console.print(table)


def register(app: typer.Typer) -> None:
    app.add_typer(eval_app, name="eval", short_help=SUMMARY)
