"""`vecap filter score`: the CLIP score of every record, `filter.clip_score`.

The score is the cosine of the image embedding and the text embedding (of
`text_key`, the AltText by default) under the model `vecap eval` loads, the
quantity DataComp's CLIP-score baselines and DFN filter by. Images are read and
decoded through the one image path (stream/images.py) in threads running ahead
of the model; the model sees batches, in input order.

On the way, each record meets, in this order: its text (`no-text` or, a list
from caption/rewrite --n, `text-list`, rejected;
--text-filter, dropped), its image (the image path's rejections; --min-side,
--max-aspect, dropped), then its score (--min-score, dropped under
`clip-score-below`). Every score written is also counted into a histogram
(histogram.py), kept in the tally so that it is sealed with the shards that
hold its records and a resumed run carries it on.
"""

from __future__ import annotations

import io
import itertools
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from vecap_cli.generate.ahead import map_ahead
from vecap_cli.placement import Placement, device_name
from vecap_cli.steps.batching import in_batches
from vecap_cli.steps.filter import histogram
from vecap_cli.steps.filter.rules import BasicRules
from vecap_cli.stream.images import DEFAULT_LIMITS, ImageLimits, ImageRejected, load_checked
from vecap_cli.stream.sample import Sample
from vecap_cli.stream.tally import Tally

FIELD = "filter"  # the record's object that filter steps write into
SCORE = "clip_score"
BELOW = "clip-score-below"
NO_TEXT = "no-text"
TEXT_LIST = "text-list"  # a list of captions (caption/rewrite --n): which one to score is not ours
HISTOGRAM = "clip_score_histogram"  # the tally's keyed count: bin -> records


class Scorer(Protocol):
    def prepare(self, image) -> object: ...  # in a worker thread: RGB PIL image -> model input

    def score(self, images: list, texts: list[str]) -> list[float]: ...


@dataclass(frozen=True)
class ScoreConfig:
    model: str = ""
    pretrained: str | None = None
    tokenizer: str | None = None
    text_key: str = "alt"
    min_score: float | None = None
    rules: BasicRules = field(default_factory=BasicRules)
    batch_size: int = 64
    threads: int = 4  # decode threads; 0 decodes inline
    device: str = "auto"
    image_limits: ImageLimits = DEFAULT_LIMITS  # --max-image-bytes, --max-pixels

    def identity(self) -> tuple:
        """What decides the output: a resumed run must agree on it (batching may differ)."""
        return (self.model, self.pretrained, self.tokenizer, self.text_key, self.min_score,
                self.rules)  # fmt: skip

    def model_name(self) -> str:
        """The scores' origin, in the histogram: only scores of one model add up."""
        return f"{self.model}:{self.pretrained}" if self.pretrained else self.model


class _Out(Exception):
    """A record that leaves before the model: dropped (`drop`) or rejected."""

    def __init__(self, rule: str, detail: str, drop: bool):
        super().__init__(detail)
        self.rule, self.drop = rule, drop


def score(
    samples: Iterable[Sample], tally: Tally, config: ScoreConfig, load: Callable[[], Scorer]
) -> Iterator[Sample]:
    """`load` builds the scorer when the first record has been read: an input that
    cannot be opened fails before a model loads (and says what it loaded), and an
    empty input loads none."""
    tally.declare(HISTOGRAM, keyed=True)
    samples = iter(samples)
    first = next(samples, None)
    if first is None:
        return
    samples = itertools.chain([first], samples)
    scorer = load()
    key, rules, limits = config.text_key, config.rules, config.image_limits

    def prepare(sample: Sample) -> tuple[str, object]:
        text = sample.record.get(key)
        if isinstance(text, list):
            detail = f"'{key}' holds a list of {len(text)}, not one text: score after vecap mix"
            raise _Out(TEXT_LIST, detail, drop=False)
        if not isinstance(text, str) or not text.strip():
            raise _Out(NO_TEXT, f"no text in '{key}'", drop=False)
        if not isinstance(sample.record.get(FIELD, {}), dict):
            raise _Out(f"{FIELD}-not-object", f"'{FIELD}' is not an object", drop=False)
        if (out := rules.text(text)) is not None:
            raise _Out(*out, drop=True)
        image, size = _image(sample.image_bytes(limits), limits)
        if (out := rules.image(*size)) is not None:
            raise _Out(*out, drop=True)
        return text, scorer.prepare(image)

    def prepared() -> Iterator[tuple[Sample, tuple[str, object]]]:
        ahead = max(2 * config.batch_size, 2 * config.threads, 8)
        for sample, item in map_ahead(prepare, samples, config.threads, ahead):
            if isinstance(item, BaseException):
                _leave(tally, sample, item)
            else:
                yield sample, item

    for group in in_batches(prepared(), config.batch_size):
        scores = scorer.score([item for _, (_, item) in group], [text for _, (text, _) in group])
        for (sample, _), value in zip(group, scores, strict=True):
            value = round(float(value), 6)  # as written, and as select reads it back
            if config.min_score is not None and value < config.min_score:
                tally.drop(BELOW, sample)
                continue
            sample.record.setdefault(FIELD, {})[SCORE] = value
            tally.count(HISTOGRAM, sample, key=str(histogram.bin_of(value)))
            yield sample


def _image(data: bytes, limits: ImageLimits) -> tuple[object, tuple[int, int]]:
    """The decoded RGB image and its header's (width, height), which a JPEG decoded
    at a reduced scale (to fit --max-pixels) no longer shows."""
    image, scaled = load_checked(data, limits)
    size = image.size
    if scaled:
        from PIL import Image

        with Image.open(io.BytesIO(data)) as header:
            size = header.size
    with image:
        return image.convert("RGB"), size


def _leave(tally: Tally, sample: Sample, err: BaseException) -> None:
    if isinstance(err, _Out) and err.drop:
        tally.drop(err.rule, sample)
    elif isinstance(err, _Out | ImageRejected):
        tally.reject(err.rule if isinstance(err, _Out) else err.reason, str(err), sample)
    else:
        tally.reject("bad-image", f"{type(err).__name__}: {err}", sample)


def default_threads() -> int:
    return max(1, min(4, os.cpu_count() or 1))


class ClipScorer:
    """A CLIP model as `vecap eval` loads and runs it (eval/models.py, eval/embed.py):
    the same preprocessing, the same L2-normalized embeddings, on the GPU when there
    is one (under AMP there, fp32 on the CPU)."""

    def __init__(
        self, config: ScoreConfig, placement: Placement, seed: int = 0, log=lambda line: None
    ):
        import torch

        from vecap_cli.eval.embed import Encoder
        from vecap_cli.eval.models import load_model

        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        self.device = device = device_name(config.device, placement, gpus)

        loaded = load_model(config.model, config.pretrained, config.tokenizer, device, seed, log)
        self.prepare = loaded.preprocess
        self.encoder = Encoder(loaded.model, loaded.tokenizer, device)

    def score(self, images: list, texts: list[str]) -> list[float]:
        import torch

        pixels = torch.stack(images)  # (B, 3, H, W)
        image = self.encoder.images(pixels)  # (B, D), unit rows
        text = self.encoder.texts(texts, len(texts))  # (B, D)
        return (image * text).sum(dim=-1).tolist()
