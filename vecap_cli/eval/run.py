"""`vecap eval` as one call: dataset + model + task -> a clip_benchmark result.

The result is what clip_benchmark's `run` dumps (dataset, model, pretrained,
task, metrics, language; `pretrained` a string, "" for random weights, the
directory for a model directory), so `clip_benchmark build` aggregates it as
it is; vecap adds `details` (counts, seconds, version).
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass

from vecap_cli import __version__
from vecap_cli.errors import VecapError
from vecap_cli.eval.data import DataSpec, open_dataset
from vecap_cli.eval.dist import Group
from vecap_cli.eval.models import load_model
from vecap_cli.eval.prompts import load_classnames, load_templates
from vecap_cli.eval.tasks import empty_message, evaluate_retrieval, evaluate_zeroshot
from vecap_cli.process_group import pick_device
from vecap_cli.stream.progress import progress
from vecap_cli.stream.runner import RunOptions, per_rank, write_stats
from vecap_cli.stream.sinks import open_rejects
from vecap_cli.stream.tally import Tally

TASKS = {"zeroshot": "zeroshot_classification", "retrieval": "zeroshot_retrieval"}
LANGUAGE = "en"  # clip_benchmark's default; vecap's built-in templates are English


@dataclass(frozen=True)
class EvalConfig:
    task: str  # "zeroshot" | "retrieval"
    data: DataSpec
    model: str
    pretrained: str | None = None
    tokenizer: str | None = None  # HF only: where the tokenizer is, when not in the model dir
    context_length: int | None = None  # text tokens; None: what the weights were trained with
    classnames: str | None = None  # file or built-in name; default: the image folders
    templates: str = "openai"
    ks: tuple[int, ...] = (1, 5, 10)
    batch_size: int = 64
    device: str | None = None  # default: cuda when there is one
    amp: bool = True  # on GPU only
    workers: int = 4  # image-decoding threads
    dataset_name: str | None = None  # default: the inputs as given

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"unknown task '{self.task}' (choose from {', '.join(TASKS)})")
        if not self.ks or min(self.ks) < 1:
            raise ValueError("recall k values must be positive")


def run_eval(config: EvalConfig, run: RunOptions) -> tuple[dict, Tally, bool]:
    """(result, the counts of all ranks, whether this rank is the one that reports)."""
    tally = Tally("eval", strict=run.strict)
    device = pick_device(config.device, run)
    rejects = None
    if run.rejects:
        rejects = open_rejects(per_rank(run.rejects, run.rank, run.world_size))
    tally.rejects = rejects
    group = Group.start(run, device, run.log)
    started = time.monotonic()
    try:
        metrics, loaded = _evaluate(config, run, tally, group, device)
        total = _all_ranks(tally, group)
    finally:
        group.close()
        if rejects is not None:
            rejects.close()
    details = {
        k: tally.extra[k] for k in ("images", "texts", "classes", "prompts") if k in tally.extra
    }
    details.update(seconds=round(time.monotonic() - started, 3), vecap=__version__)
    result = {
        "dataset": config.dataset_name or " ".join(config.data.inputs),
        "model": loaded.name,
        "pretrained": loaded.pretrained or "",  # clip_benchmark's build joins it to the model
        "task": TASKS[config.task],
        "metrics": metrics,
        "language": LANGUAGE,
        "details": details,
    }
    tally.extra["metrics"] = metrics
    if run.stats:
        write_stats(per_rank(run.stats, run.rank, run.world_size), tally)
    return result, total, group.main


def _evaluate(config: EvalConfig, run: RunOptions, tally: Tally, group: Group, device):
    """(metrics, loaded model): checks that fail fast, then the model, then the task."""
    dataset = open_dataset(config.data, tally, group.rank, group.world_size, run.log)
    first = next(dataset.samples, None)  # nothing at all: say so before loading a model
    if not any(group.all_gather(first is not None)):
        raise VecapError(empty_message(tally))
    samples = itertools.chain([] if first is None else [first], dataset.samples)
    if config.task == "zeroshot":
        classnames = _classnames(config, dataset.classnames)
        templates = load_templates(config.templates)
    log = run.log if group.main else (lambda line: None)  # one line, not one per rank
    loaded = load_model(
        config.model,
        config.pretrained,
        config.tokenizer,
        device,
        run.seed,
        log,
        context_length=config.context_length,
    )
    with progress("eval", not run.quiet and group.main) as update:
        common = dict(
            amp=config.amp,
            tally=tally,
            group=group,
            workers=config.workers,
            limits=run.image_limits,
            progress=None if update is None else (lambda t: update(t.n_in, t.n_out)),
        )
        model, tokenizer, preprocess = loaded.model, loaded.tokenizer, loaded.preprocess
        if config.task == "retrieval":
            metrics = evaluate_retrieval(
                model, tokenizer, preprocess, samples, config.batch_size, device, ks=config.ks,
                **common,
            )  # fmt: skip
        else:
            metrics = evaluate_zeroshot(
                model, tokenizer, preprocess, samples, classnames, templates, config.batch_size,
                device, **common,
            )  # fmt: skip
    return metrics, loaded


def _all_ranks(tally: Tally, group: Group) -> Tally:
    """The counts of every rank in one Tally, for the summary beside the global result
    (each rank's --stats keeps its own)."""
    if group.world_size == 1:
        return tally
    total = Tally("eval")
    total.started, total.extra = tally.started, dict(tally.extra)
    for n_in, n_out, rejected in group.all_gather((tally.n_in, tally.n_out, tally.rejected)):
        total.n_in += n_in
        total.n_out += n_out
        total.rejected.update(rejected)
    return total


def _classnames(config: EvalConfig, from_folders: list[str] | None) -> list[str]:
    if config.classnames is None:
        if from_folders is None:
            raise VecapError("zero-shot needs class names: pass --classnames FILE (or imagenet1k)")
        return from_folders
    names = load_classnames(config.classnames)
    if from_folders is not None and len(names) != len(from_folders):
        raise VecapError(
            f"--classnames has {len(names)} names for {len(from_folders)} class folders"
        )
    return names
