"""What `vecap caption` and `vecap rewrite` offer before any model loads.

Importing this module registers every built-in backend: the generation ones
(vecap_cli.generate registers hf, openclip and openai) and rewrite's
model-free `rules`, registered here, a floor above them, because its fusion is
rewrite's own record logic (rewrite/rules.py). Light on purpose: the CLI reads
--backend's choices and caption's --style presets from here at start-up; the rules
fusion loads when built. `staged` builds either command's stage for one
process or for --workers of them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from vecap_cli.errors import VecapError
from vecap_cli.generate.base import on_gpu, share_cores
from vecap_cli.generate.registry import REWRITE, Backend, ModelOptions, Request, get, register

if TYPE_CHECKING:
    from vecap_cli.stream.parallel import Stage

# VeCLIP's prompt for LLaVA (arXiv 2310.07699, section 3).
DEFAULT_PROMPT = "Describe the image concisely, less than 20 words."


@dataclass(frozen=True)
class CaptionStyle:
    """A `vecap caption --style`: the prompt, and the --max-new-tokens it needs."""

    prompt: str
    max_new_tokens: int
    help: str


# Short and dense synthetic captions help CLIP differently (arXiv 2410.02740):
# `short` for the one-sentence kind, `dense` for a detailed description.
CAPTION_STYLES = {
    "default": CaptionStyle(DEFAULT_PROMPT, 40, "VeCLIP's prompt"),
    "short": CaptionStyle(
        "Describe the image in one short sentence of about 15 words.",
        40,
        "one sentence of about 15 words",
    ),
    "dense": CaptionStyle(
        "Describe the image in detail, in a few sentences: the main subjects and what "
        "they are doing, their colors, shapes and materials, the setting and the "
        "background, and any visible text.",
        200,
        "a detailed description in a few sentences",
    ),
}


def _rules(request: Request):
    from vecap_cli.steps.rewrite.rules import RulesFusion

    return RulesFusion()


register(
    Backend(
        "rules",
        REWRITE,
        _rules,
        help="model-free fusion (the default without --model)",
        batch_size=512,  # ignored: rules fuses record by record
        needs_model=False,
    )
)


class Config(Protocol):  # CaptionConfig, RewriteConfig
    backend: str
    batch_size: int


def staged(
    serves: str, config: Config, options: ModelOptions, workers: int, build: Callable[[], Stage]
) -> tuple[Stage, int | None]:
    """The stage `build` makes, for one process or for --workers of them, and the most
    records a worker's batch holds (two model batches; None for a backend without a
    model, whose records are cheap).

    Built here first, so that what can fail before any record is read does (--model,
    --cache, --blocklist). With --workers > 1 that copy is dropped before the fork and
    each worker builds its own (`per_process`): a server's client and its threads, the
    cache's connection and a model belong to one process. A backend that runs its
    model in this process on a GPU is refused (`Backend.workers_refusal`); on the CPU,
    the workers share the cores between their torch threads.
    """
    chosen = get(serves, config.backend)
    refusal = chosen.workers_refusal(workers, lambda: on_gpu(options.device))
    if refusal is not None:
        raise VecapError(refusal)
    stage = build()
    records = 2 * config.batch_size if chosen.needs_model else None
    if workers == 1:
        return stage, records
    del stage  # its cache connection closes here, before the fork (no thread has started)
    from vecap_cli.stream.parallel import per_process

    def in_worker() -> Stage:
        if chosen.in_process:
            share_cores(workers)
        return build()

    return per_process(in_worker), records
