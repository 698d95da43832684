"""The two evaluations, on any open_clip-style model (`encode_image`, `encode_text`).

These are the in-process API: `vecap train --val` calls `evaluate_retrieval`
on the model it is training. Each rank embeds its share of `dataset`; the
metrics are computed from every rank's embeddings and returned on every rank.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence

import torch

from vecap_cli.errors import VecapError
from vecap_cli.eval.data import captions_of, class_of
from vecap_cli.eval.dist import Group
from vecap_cli.eval.embed import Encoder, Labelled, eval_mode, image_batches
from vecap_cli.eval.metrics import class_embeddings, retrieval_recall, zeroshot_metrics
from vecap_cli.eval.prompts import Templates, prompts
from vecap_cli.stream.images import DEFAULT_LIMITS, ImageLimits
from vecap_cli.stream.sample import Sample
from vecap_cli.stream.tally import Tally

Progress = Callable[[Tally], None]


def evaluate_retrieval(
    model,
    tokenizer,
    preprocess: Callable,
    dataset: Iterable[Sample],
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    *,
    ks: Sequence[int] = (1, 5, 10),
    amp: bool = True,
    tally: Tally | None = None,
    group: Group | None = None,
    workers: int = 4,
    progress: Progress | None = None,
    limits: ImageLimits = DEFAULT_LIMITS,
) -> dict[str, float]:
    """Image→text and text→image recall@k over images with one or more captions each.

    `dataset` yields Samples with an image and captions (`captions`, `caption`,
    `text` or `alt`); those without a caption or a readable image are rejected
    in `tally`, which also receives the totals (`images`, `texts`) in `extra`.
    Returns clip_benchmark's keys: `image_retrieval_recall@k` is text→image,
    `text_retrieval_recall@k` image→text.
    """
    tally = tally if tally is not None else Tally("eval")
    group = group or Group()
    with eval_mode(model):
        encoder = Encoder(model, tokenizer, device, amp)
        image_emb, text_emb, owners = _embed_captioned(
            encoder, preprocess, dataset, batch_size, tally, workers, progress, limits
        )
    local = torch.cat(image_emb) if image_emb else torch.empty(0, 0)
    counts = group.all_gather(len(local))
    if sum(counts) == 0:
        raise VecapError(empty_message(tally))
    offset = sum(counts[: group.rank])
    images = group.cat(local)
    texts = group.cat(text_emb)
    text_image = group.cat(torch.tensor(owners, dtype=torch.long) + offset)
    tally.extra.update(images=len(images), texts=len(texts))
    return retrieval_recall(images, texts, text_image, ks)


def _embed_captioned(encoder, preprocess, dataset, batch_size, tally, workers, progress, limits):
    """This rank's image embeddings (per batch), caption embeddings, and each caption's image."""
    items = _labelled(dataset, lambda r: (captions_of(r) or None, "no-caption"))
    image_emb, captions, owners = [], [], []
    n_images = 0
    for pixels, caps in image_batches(items, preprocess, batch_size, tally, workers, limits):
        image_emb.append(encoder.images(pixels))
        for image_captions in caps:
            captions += image_captions
            owners += [n_images] * len(image_captions)
            n_images += 1
        if progress:
            progress(tally)
    return image_emb, encoder.texts(captions, batch_size), owners


def evaluate_zeroshot(
    model,
    tokenizer,
    preprocess: Callable,
    dataset: Iterable[Sample],
    classnames: list[str],
    templates: Templates,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    *,
    amp: bool = True,
    tally: Tally | None = None,
    group: Group | None = None,
    workers: int = 4,
    progress: Progress | None = None,
    limits: ImageLimits = DEFAULT_LIMITS,
) -> dict[str, float]:
    """Top-1, top-5 and mean per-class recall of zero-shot classification.

    Class weights are the averaged embeddings of every template filled with the
    class name (the ranks split the classes); `dataset` yields Samples with an
    image and a class index `cls` in [0, len(classnames)).
    """
    tally = tally if tally is not None else Tally("eval")
    group = group or Group()
    n = len(classnames)
    with eval_mode(model):
        encoder = Encoder(model, tokenizer, device, amp)
        weights, n_prompts = _class_weights(encoder, classnames, templates, batch_size, group)
        logits, targets = _classify(
            encoder, weights, preprocess, dataset, batch_size, tally, workers, progress, limits
        )
    local = torch.cat(logits) if logits else torch.empty(0, n)
    all_logits = group.cat(local)
    all_targets = group.cat(torch.tensor(targets, dtype=torch.long))
    if len(all_logits) == 0:
        raise VecapError(empty_message(tally))
    tally.extra.update(images=len(all_logits), classes=n, prompts=n_prompts)
    return zeroshot_metrics(all_logits, all_targets, n)


def _classify(encoder, weights, preprocess, dataset, batch_size, tally, workers, progress, limits):
    """This rank's (B, C) logits per batch and the target of each image."""
    n = len(weights)

    def label(record: dict):
        cls = class_of(record)
        if cls is None:
            return None, "no-class"
        return (cls, "") if 0 <= cls < n else (None, "bad-class")

    items = _labelled(dataset, label, classes=n)
    logits, targets = [], []
    for pixels, classes in image_batches(items, preprocess, batch_size, tally, workers, limits):
        logits.append(encoder.images(pixels) @ weights.T)  # (B, C)
        targets += classes
        if progress:
            progress(tally)
    return logits, targets


def _class_weights(
    encoder: Encoder, classnames: list[str], templates: Templates, batch_size: int, group: Group
) -> tuple[torch.Tensor, int]:
    """(C, D) normalized class embeddings, and the number of prompts behind them.
    Rank r embeds classes r, r+w, r+2w, ..."""
    mine = list(range(group.rank, len(classnames), group.world_size))
    texts, owners = prompts([classnames[c] for c in mine], templates)
    local = torch.empty(0, 0)
    if texts:
        local = class_embeddings(encoder.texts(texts, batch_size), torch.tensor(owners), len(mine))
    parts = group.all_gather((local, len(texts)))
    order = [
        c for r in range(group.world_size) for c in range(r, len(classnames), group.world_size)
    ]
    weights = torch.empty(len(classnames), max(p.shape[1] for p, _ in parts))
    weights[order] = torch.cat([p for p, _ in parts if len(p)])
    return weights, sum(n for _, n in parts)


def _labelled(samples: Iterable[Sample], label: Callable, classes: int = 0) -> Iterator[Labelled]:
    for sample in samples:
        value, reason = label(sample.record)
        if value is not None:
            yield sample, value, None
            continue
        detail = {
            "no-caption": "no caption in captions, caption, text or alt",
            "no-class": "no integer class in 'cls'",
            "bad-class": f"class {sample.record.get('cls')!r} is not in [0, {classes})",
        }[reason]
        yield sample, None, (reason, detail)


def empty_message(tally: Tally) -> str:
    rejected = sum(tally.rejected.values())
    why = f" ({rejected:,} of {tally.n_in:,} rejected)" if tally.n_in else ""
    return f"no samples to evaluate{why}"
