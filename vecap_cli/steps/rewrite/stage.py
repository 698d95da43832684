"""The rewrite stage: safety check, batched fusion, validation, fallback to VeC.

Per record, in order:
- a `vecap` already there: passed through (unless overwrite);
- no `vec`: passed through without `vecap` (nothing to fuse; mix then trains on alt);
- no `alt`, or an AltText hitting the blocklist: `vecap` = `vec`;
- else fused; a failed or invalid generation falls back to `vecap` = `vec`.
Every branch is counted in the `rewrite` statistic (`tally.count`, sealed with the
record's shard); no record is dropped. With --cache, `cache` counts the answers
it served (hit) and those the model was asked for (miss).

`vec` may be a list (caption --n): VeC i is its i-th caption. With --n K >= 2
(steps/draws.py, LLM backends only), `vecap` is a list of K: draw i fuses alt
with VeC (i mod len(vec)), and falls back to that VeC alone where its answer
fails or is refused; the record counts once in `rewrite` (as `sampled` when it
reached the model), each draw in `rewrite-draws`. With --n 1 a list's first
VeC is fused.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from vecap_cli.generate.base import Failed
from vecap_cli.generate.cache import served
from vecap_cli.generate.registry import REWRITE, get
from vecap_cli.steps import generation  # noqa: F401 -- registers rules
from vecap_cli.steps.batching import PASS, in_batches
from vecap_cli.steps.caption import has_text
from vecap_cli.steps.draws import Draws, ask
from vecap_cli.steps.mix import captions
from vecap_cli.steps.rewrite.prompt import STYLES, Prompt
from vecap_cli.steps.rewrite.safety import Blocklist
from vecap_cli.steps.rewrite.validate import Validator
from vecap_cli.stream.sample import Sample
from vecap_cli.stream.tally import Tally


@dataclass(frozen=True)
class RewriteConfig:
    backend: str = "rules"
    model: str = ""
    prompt_file: str | None = None
    blocklist: str = "default"
    max_new_tokens: int = 77
    batch_size: int = 8
    min_words: int = 3
    max_words: int = 60
    overwrite: bool = False
    style: str = "default"  # the prompt; what set max_new_tokens and max_words, unless given
    draws: Draws = field(default_factory=Draws)  # --n, --temperature, --seed

    def identity(self) -> tuple:
        """What decides the VeCaps: a resumed run must agree on it (batching may differ).
        The style and the draws only where not the default, so that a run keeps the
        identity it had before they existed."""
        base = (
            self.backend,
            self.model,
            self.prompt_file,
            self.blocklist,
            self.max_new_tokens,
            self.min_words,
            self.max_words,
        )
        style = () if self.style == "default" else (("style", self.style),)
        return (*base, *style, *self.draws.identity())

    @classmethod
    def of(
        cls,
        backend: str | None,
        model: str | None,
        batch_size: int | None,
        concurrency: int,
        style: str = "default",
        max_new_tokens: int | None = None,
        max_words: int | None = None,
        n: int = 1,
        temperature: float = 0.0,
        seed: int = 0,
        **fields,
    ) -> RewriteConfig:
        """The config, with the defaults that depend on the backend and the style.

        No backend named: rules without a model, hf with one; a backend that
        needs a model, without one, is a ValueError, and so are draws, a
        temperature or a style for one that needs none (rules is one fixed
        fusion). The batch: the backend's (`Backend.default_batch_size`).
        """
        backend = backend or ("hf" if model else "rules")
        chosen = get(REWRITE, backend)
        if chosen.needs_model and not model:
            raise ValueError(f"--backend {backend} needs --model")
        draws = Draws(n, temperature, seed)
        if not chosen.needs_model and (draws.sampled or style != "default"):
            raise ValueError(
                f"--backend {backend} fuses by fixed rules: no --n, --temperature or "
                "--style (they ask an LLM)"
            )
        if batch_size is None:
            batch_size = chosen.default_batch_size(concurrency)
        preset = STYLES[style]
        return cls(
            backend=backend,
            model=model or "",
            batch_size=batch_size,
            style=style,
            max_new_tokens=preset.max_new_tokens if max_new_tokens is None else max_new_tokens,
            max_words=preset.max_words if max_words is None else max_words,
            draws=draws,
            **fields,
        )


DRAWS = "rewrite-draws"  # with --n >= 2: each draw, fused, unchanged or fallback-REASON


class Fuser(Protocol):
    def generate(
        self, pairs: list[tuple[str, str]], seeds: list[int] | None = None
    ) -> list[str | Failed]: ...


class ChatModel(Protocol):
    def generate(
        self, conversations: list[list[dict]], seeds: list[int] | None = None
    ) -> list[str | Failed]: ...


class LLMFusion:
    """A chat model (hf_lm.HFChat, openai_client.OpenAIChat) behind the fusion prompt."""

    def __init__(self, chat: ChatModel, prompt: Prompt):
        self.chat, self.prompt = chat, prompt

    def generate(
        self, pairs: list[tuple[str, str]], seeds: list[int] | None = None
    ) -> list[str | Failed]:
        conversations = [self.prompt.messages(alt, vec) for alt, vec in pairs]
        if seeds is None:
            return self.chat.generate(conversations)
        return self.chat.generate(conversations, seeds=seeds)


@dataclass
class Rewriter:
    fuser: Fuser
    blocklist: Blocklist
    validator: Validator | None  # None: the fuser's output is a caption by construction (rules)


def rewrite(
    samples: Iterable[Sample], tally: Tally, config: RewriteConfig, rewriter: Rewriter
) -> Iterator[Sample]:
    tally.declare("rewrite", "blocked-terms", keyed=True)
    draws = config.draws
    if draws.n > 1:
        tally.declare(DRAWS, keyed=True)
    overwrite, hit, count = config.overwrite, rewriter.blocklist.hit, tally.count

    def triage(sample: Sample) -> tuple[Sample, object]:
        record = sample.record
        if not overwrite and has_text(record, "vecap"):
            count("rewrite", sample, key="skipped-existing")
            return sample, PASS
        vecs = captions(record.get("vec"))
        if not vecs:
            count("rewrite", sample, key="no-vec")
            return sample, PASS
        mine = [vecs[i % len(vecs)] for i in range(draws.n)]  # the VeC of each draw
        alt = record.get("alt")
        if not isinstance(alt, str) or not alt.strip():
            count("rewrite", sample, key="no-alt")
            record["vecap"] = draws.value(mine)
            return sample, PASS
        term = hit(alt)
        if term is not None:
            count("rewrite", sample, key="blocked")
            count("blocked-terms", sample, key=term)
            record["vecap"] = draws.value(mine)
            return sample, PASS
        return sample, [(alt, vec) for vec in mine]

    def counts(sample: Sample) -> Callable[[str], None]:
        if draws.n == 1:
            return lambda key: count("rewrite", sample, key=key)
        count("rewrite", sample, key="sampled")
        return lambda key: count(DRAWS, sample, key=key)

    validator = rewriter.validator
    one = getattr(rewriter.fuser, "one", None)
    if one is not None:  # a fuser with nothing to batch (rules, one draw): no batching overhead
        for sample, pairs in map(triage, samples):
            if pairs is not PASS:
                [(alt, vec)] = pairs  # type: ignore[misc]
                sample.record["vecap"] = _settle(one(alt, vec), alt, vec, validator, counts(sample))
            yield sample
        return
    tally.hold()  # batches read ahead: --rejects (the reader's, a writer's) in input order
    try:
        for group in in_batches(map(triage, samples), config.batch_size):
            asked = [(sample, pairs) for sample, pairs in group if pairs is not PASS]
            outputs = iter(
                ask(
                    rewriter.fuser.generate,
                    [pairs for _, pairs in asked],  # type: ignore[misc]
                    [sample.key for sample, _ in asked],
                    draws,
                    config.batch_size,
                )
            )
            for sample, pairs in group:
                if pairs is not PASS:
                    fused = _fused(pairs, next(outputs), validator, counts(sample), count, sample)
                    sample.record["vecap"] = draws.value(fused)
                yield sample
            tally.release(group[-1][0].idx + 1)
    finally:
        tally.release()


def _fused(pairs, outputs, validator, seen, count, sample: Sample) -> list[str]:
    """The VeCap of each draw of one record: its (alt, vec) pair's output, settled."""
    fused = []
    for (alt, vec), output in zip(pairs, outputs, strict=True):
        out, source = served(output)
        if source is not None:
            count("cache", sample, key=source)
        fused.append(_settle(out, alt, vec, validator, seen))
    return fused


def _settle(out: str | Failed, alt: str, vec: str, validator, count: Callable[[str], None]) -> str:
    """The VeCap for one fused output: the output if it is a caption, else the VeC."""
    if isinstance(out, Failed):
        count(f"fallback-{out.reason}")
        return vec
    if validator is not None:
        out, reason = validator.check(out, alt, vec)
        if reason is not None:
            count(f"fallback-{reason}")
            return vec
    count("fused" if out != vec else "unchanged")
    return out
