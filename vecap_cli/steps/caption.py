"""`vecap caption`: a visual-concept caption (VeC) for every image, in `vec`.

The stage decodes images in worker threads that run ahead of the model
(`map_ahead`), gathers them into batches, and writes each caption back in input
order. Records that already have a `vec` pass through untouched unless
`overwrite`; so do they cost nothing: they are never decoded. An answer is
data: one that `generate.answer.refusal` refuses (a link, an address, an
instruction, control bytes, too long) is a counted rejection, `caption-REASON`.
`build_captioner` assembles the backend the config names, from the registry;
with --cache, the `cache` statistic counts the answers it served (hit) and
those the model was asked for (miss).

With `condition_on` (steps/condition.py) each image goes with a prompt of its
own, the record's AltText quoted in it, and the answer is a VeCap, in `vecap`
(`vec` untouched); a record without a conditioning text is rejected
(`condition-missing`) before its image is read. The answer is checked against the
prompt without the AltText: what only the AltText holds is not let through.

With --n K >= 2 (steps/draws.py) `vec` is a list: each draw is validated like a
single answer. A draw whose request failed rejects the record (caption-REASON:
a rerun asks again, and with --cache pays only for the draws that failed); a
refused draw is left out of the list; a record whose K draws are all refused
is rejected as with one. So `vec` holds 1..K captions, in draw order. Each
draw is counted in `caption-draws`: kept, refused-REASON, failed-REASON, or
unused (valid, in a record rejected for another draw's failure).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

from vecap_cli.generate.ahead import map_ahead
from vecap_cli.generate.answer import max_chars, refusal
from vecap_cli.generate.base import Failed, Prompted
from vecap_cli.generate.cache import served
from vecap_cli.generate.load import load
from vecap_cli.generate.registry import CAPTION, ModelOptions, Request, get
from vecap_cli.steps import condition
from vecap_cli.steps.batching import PASS, in_batches
from vecap_cli.steps.draws import Draws, ask
from vecap_cli.steps.generation import CAPTION_STYLES, DEFAULT_PROMPT
from vecap_cli.steps.mix import captions
from vecap_cli.stream.images import DEFAULT_LIMITS, ImageLimits, ImageRejected
from vecap_cli.stream.sample import Sample
from vecap_cli.stream.tally import Tally


class Captioner(Protocol):
    def prepare(self, data: bytes) -> object: ...  # in a worker thread: bytes → model input

    def generate(self, batch: list, seeds: list[int] | None = None) -> list[str | Failed]: ...


# with --n >= 2, each draw: kept, refused-REASON, failed-REASON, or unused (valid, but
# its record was rejected for another draw's failed request)
DRAWS = "caption-draws"


@dataclass(frozen=True)
class CaptionConfig:
    backend: str = "hf"
    model: str = ""
    pretrained: str | None = None
    prompt: str = DEFAULT_PROMPT
    max_new_tokens: int = 40
    batch_size: int = 8
    decode_threads: int = 4  # 0 decodes inline
    overwrite: bool = False
    field: str = "vec"
    image_limits: ImageLimits = DEFAULT_LIMITS  # --max-image-bytes, --max-pixels
    condition_on: str | None = None  # a record field quoted into `prompt`'s {alt}
    style: str = "default"  # what set prompt and max_new_tokens, unless given
    draws: Draws = dataclasses.field(default_factory=Draws)  # --n, --temperature, --seed

    def identity(self) -> tuple:
        """What decides the captions: a resumed run must agree on it (batching, threads
        and processes may differ). The conditioning, the style and the draws only where
        not the default, so that a run keeps the identity it had before they existed."""
        base = (self.backend, self.model, self.pretrained, self.prompt, self.max_new_tokens)
        on = () if self.condition_on is None else (("condition_on", self.condition_on),)
        style = () if self.style == "default" else (("style", self.style),)
        return (*base, *on, *style, *self.draws.identity())

    @classmethod
    def of(
        cls,
        backend: str,
        batch_size: int | None,
        decode_threads: int | None,
        concurrency: int,
        processes: int = 1,
        style: str = "default",
        prompt: str | None = None,
        max_new_tokens: int | None = None,
        n: int = 1,
        temperature: float = 0.0,
        seed: int = 0,
        **fields,
    ) -> CaptionConfig:
        """The config, with the defaults that depend on the backend (its batch,
        `Backend.default_batch_size`), the style (prompt, --max-new-tokens) and the
        machine (decode threads: up to 4, one a core, the cores shared by
        `processes`, --workers). With `condition_on`, the caption goes to `vecap`; a
        backend that reads no prompt, or a bad --n/--temperature, is a ValueError."""
        chosen = get(CAPTION, backend)
        if (on := fields.get("condition_on")) is not None:
            if not on.strip():
                raise ValueError("needs the name of a record field, not ''")
            if not chosen.takes_prompt:
                raise ValueError(
                    f"--backend {backend} reads no prompt: it cannot condition a caption"
                )
            fields.setdefault("field", "vecap")
        if batch_size is None:
            batch_size = chosen.default_batch_size(concurrency)
        if decode_threads is None:
            decode_threads = max(1, min(4, len(os.sched_getaffinity(0)) // processes))
        preset = CAPTION_STYLES[style]
        return cls(
            backend=backend,
            batch_size=batch_size,
            decode_threads=decode_threads,
            style=style,
            prompt=preset.prompt if prompt is None else prompt,
            max_new_tokens=preset.max_new_tokens if max_new_tokens is None else max_new_tokens,
            draws=Draws(n, temperature, seed),
            **fields,
        )


def build_captioner(config: CaptionConfig, options: ModelOptions) -> Captioner:
    """The captioner `config.backend` names: checked now, loaded when a batch first needs it."""
    request = Request(
        config.model,
        config.max_new_tokens,
        options,
        prompt=config.prompt,
        pretrained=config.pretrained,
        limits=config.image_limits,
        temperature=config.draws.temperature,
    )
    return load(CAPTION, config.backend, request)


def has_text(record: dict, field: str) -> bool:
    return bool(captions(record.get(field)))


def caption(
    samples: Iterable[Sample], tally: Tally, config: CaptionConfig, captioner: Captioner
) -> Iterator[Sample]:
    tally.declare("caption", keyed=True)
    if config.draws.n > 1:
        tally.declare(DRAWS, keyed=True)
    field, overwrite, on = config.field, config.overwrite, config.condition_on
    limit = max_chars(config.max_new_tokens)

    def prepare(sample: Sample):
        if not overwrite and has_text(sample.record, field):
            return PASS  # never decoded
        if on is None:
            return captioner.prepare(sample.image_bytes(config.image_limits))
        text = condition.condition_text(sample.record, on)  # before the image is read
        image = captioner.prepare(sample.image_bytes(config.image_limits))
        return Prompted(image, condition.render(config.prompt, text))

    def prepared() -> Iterator[tuple[Sample, object]]:
        threads = config.decode_threads
        ahead = max(2 * config.batch_size, 2 * threads, 8)
        for sample, item in map_ahead(prepare, samples, threads, ahead):
            if isinstance(item, BaseException):
                _reject(tally, sample, item)
            else:
                yield sample, item

    tally.hold()  # decoding and asking run ahead: --rejects in input order all the same
    try:
        for group in in_batches(prepared(), config.batch_size):
            yield from _captioned(group, captioner, tally, config, limit)
            tally.release(group[-1][0].idx + 1)
    finally:
        tally.release()


def _captioned(
    group: list[tuple[Sample, object]],
    captioner: Captioner,
    tally: Tally,
    config: CaptionConfig,
    limit: int,
) -> Iterator[Sample]:
    """One batch's samples, captioned (or passed, or rejected)."""
    conditioned = config.condition_on is not None
    instruction = condition.instruction(config.prompt) if conditioned else config.prompt
    draws = config.draws
    asked = [(sample, item) for sample, item in group if item is not PASS]
    answers = iter(
        ask(
            captioner.generate,
            [[item] * draws.n for _, item in asked],
            [sample.key for sample, _ in asked],
            draws,
            config.batch_size,
        )
    )
    for sample, item in group:
        if item is PASS:
            tally.count("caption", sample, key="skipped-existing")
            yield sample
            continue
        kept, failed, refused, outcomes = _judged(next(answers), sample, tally, instruction, limit)
        if failed is not None and kept:  # not written: the valid draws go unused this time
            outcomes = ["unused" if key == "kept" else key for key in outcomes]
        if draws.n > 1:
            for key in outcomes:
                tally.count(DRAWS, sample, key=key)
        if failed is not None:
            tally.reject(f"caption-{failed.reason}", failed.detail, sample)
        elif not kept:
            # A rejection, not a record without `vec`: rewrite and mix would quietly
            # train on the AltText alone, while --rejects keeps it for a rerun.
            reason, detail = refused
            tally.reject(
                "empty-caption" if reason == "empty" else f"caption-{reason}", detail, sample
            )
        else:
            sample.record[config.field] = draws.value(kept)
            tally.count("caption", sample, key="captioned")
            yield sample


def _judged(outs: list, sample: Sample, tally: Tally, instruction: str, limit: int):
    """A record's draws judged against `instruction` (the prompt, without a
    conditioning text): the captions kept, the first failure and the first refusal
    (or None), and each draw's outcome (kept, failed-REASON, refused-REASON)."""
    kept: list[str] = []
    failed = refused = None
    outcomes = []
    for out in outs:
        text, source = served(out)
        if source is not None:
            tally.count("cache", sample, key=source)
        if isinstance(text, Failed):
            failed = failed or text
            outcomes.append(f"failed-{text.reason}")
        elif (why := refusal(text, instruction, limit)) is not None:
            refused = refused or why
            outcomes.append(f"refused-{why[0]}")
        else:
            kept.append(text)
            outcomes.append("kept")
    return kept, failed, refused, outcomes


def _reject(tally: Tally, sample: Sample, err: BaseException) -> None:
    if isinstance(err, (ImageRejected, condition.ConditionMissing)):
        tally.reject(err.reason, str(err), sample)
    else:
        tally.reject("bad-image", f"{type(err).__name__}: {err}", sample)
