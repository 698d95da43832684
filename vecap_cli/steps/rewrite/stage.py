"""The rewrite stage: safety check, batched fusion, validation, fallback to VeC.

Per record, in order:
- a `vecap` already there: passed through (unless overwrite);
- no `vec`: passed through without `vecap` (nothing to fuse; mix then trains on alt);
- no `alt`, or an AltText hitting the blocklist: `vecap` = `vec`;
- else fused; a failed or invalid generation falls back to `vecap` = `vec`.
Every branch is counted in the `rewrite` statistic (`tally.count`, sealed with the
record's shard); no record is dropped. With --cache, `cache` counts the answers
it served (hit) and those the model was asked for (miss).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

from vecap_cli.generate.base import Failed
from vecap_cli.generate.cache import served
from vecap_cli.generate.registry import REWRITE, get
from vecap_cli.steps import generation  # noqa: F401 -- registers rules
from vecap_cli.steps.batching import PASS, in_batches
from vecap_cli.steps.caption import has_text
from vecap_cli.steps.rewrite.prompt import Prompt
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

    def identity(self) -> tuple:
        """What decides the VeCaps: a resumed run must agree on it (batching may differ)."""
        return (
            self.backend,
            self.model,
            self.prompt_file,
            self.blocklist,
            self.max_new_tokens,
            self.min_words,
            self.max_words,
        )

    @classmethod
    def of(
        cls,
        backend: str | None,
        model: str | None,
        batch_size: int | None,
        concurrency: int,
        **fields,
    ) -> RewriteConfig:
        """The config, with the defaults that depend on the backend.

        No backend named: rules without a model, hf with one; a backend that
        needs a model, without one, is a ValueError. The batch: the backend's
        (`Backend.default_batch_size`).
        """
        backend = backend or ("hf" if model else "rules")
        chosen = get(REWRITE, backend)
        if chosen.needs_model and not model:
            raise ValueError(f"--backend {backend} needs --model")
        if batch_size is None:
            batch_size = chosen.default_batch_size(concurrency)
        return cls(backend=backend, model=model or "", batch_size=batch_size, **fields)


class Fuser(Protocol):
    def generate(self, pairs: list[tuple[str, str]]) -> list[str | Failed]: ...


class ChatModel(Protocol):
    def generate(self, conversations: list[list[dict]]) -> list[str | Failed]: ...


class LLMFusion:
    """A chat model (hf_lm.HFChat, openai_client.OpenAIChat) behind the fusion prompt."""

    def __init__(self, chat: ChatModel, prompt: Prompt):
        self.chat, self.prompt = chat, prompt

    def generate(self, pairs: list[tuple[str, str]]) -> list[str | Failed]:
        return self.chat.generate([self.prompt.messages(alt, vec) for alt, vec in pairs])


@dataclass
class Rewriter:
    fuser: Fuser
    blocklist: Blocklist
    validator: Validator | None  # None: the fuser's output is a caption by construction (rules)


def rewrite(
    samples: Iterable[Sample], tally: Tally, config: RewriteConfig, rewriter: Rewriter
) -> Iterator[Sample]:
    tally.declare("rewrite", "blocked-terms", keyed=True)
    overwrite, hit, count = config.overwrite, rewriter.blocklist.hit, tally.count

    def triage(sample: Sample) -> tuple[Sample, object]:
        record = sample.record
        if not overwrite and has_text(record, "vecap"):
            count("rewrite", sample, key="skipped-existing")
            return sample, PASS
        vec = record.get("vec")
        if not isinstance(vec, str) or not vec.strip():
            count("rewrite", sample, key="no-vec")
            return sample, PASS
        alt = record.get("alt")
        if not isinstance(alt, str) or not alt.strip():
            count("rewrite", sample, key="no-alt")
            record["vecap"] = vec
            return sample, PASS
        term = hit(alt)
        if term is not None:
            count("rewrite", sample, key="blocked")
            count("blocked-terms", sample, key=term)
            record["vecap"] = vec
            return sample, PASS
        return sample, (alt, vec)

    def counts(sample: Sample) -> Callable[[str], None]:
        return lambda key: count("rewrite", sample, key=key)

    fuse, validator = rewriter.fuser.generate, rewriter.validator
    one = getattr(rewriter.fuser, "one", None)
    if one is not None:  # a fuser with nothing to batch (rules): no batching overhead
        for sample, pair in map(triage, samples):
            if pair is not PASS:
                alt, vec = pair  # type: ignore[misc]
                sample.record["vecap"] = _settle(one(alt, vec), alt, vec, validator, counts(sample))
            yield sample
        return
    tally.hold()  # batches read ahead: --rejects (the reader's, a writer's) in input order
    try:
        for group in in_batches(map(triage, samples), config.batch_size):
            pairs = [pair for _, pair in group if pair is not PASS]
            outputs = iter(fuse(pairs) if pairs else ())  # type: ignore[arg-type]
            for sample, pair in group:
                if pair is not PASS:
                    alt, vec = pair  # type: ignore[misc]
                    out, source = served(next(outputs))
                    if source is not None:
                        count("cache", sample, key=source)
                    sample.record["vecap"] = _settle(out, alt, vec, validator, counts(sample))
                yield sample
            tally.release(group[-1][0].idx + 1)
    finally:
        tally.release()


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
