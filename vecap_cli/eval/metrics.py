"""The metrics, as pure functions of embeddings and labels (no model, no I/O).

Definitions are clip_benchmark's, so numbers compare across papers:

- retrieval (COCO/Flickr Karpathy-test style, several captions per image):
  text→image R@k is the share of captions whose image is among the k images
  scored highest for it; image→text R@k is the share of images with at least
  one of their captions among the k captions scored highest for it. Keys keep
  clip_benchmark's names: `image_retrieval_recall@k` is text→image (an image is
  retrieved), `text_retrieval_recall@k` is image→text.
- zero-shot classification: top-1 and top-5 accuracy over images (top-5 is NaN
  with fewer than 5 classes), and mean per-class recall, averaged over the
  classes that occur in the targets (sklearn's balanced accuracy).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

# Score rows per chunk: bounds the (queries, candidates) score block to ~64 MiB.
_BLOCK = 1 << 24


def retrieval_recall(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    text_image: torch.Tensor,
    ks: Sequence[int] = (1, 5, 10),
) -> dict[str, float]:
    """Recall@k both ways. image_emb (N, D) and text_emb (M, D) are L2-normalized;
    text_image (M,) holds the index of each caption's image."""
    n_images, n_texts = len(image_emb), len(text_emb)
    if n_images == 0 or n_texts == 0:
        raise ValueError("retrieval needs at least one image and one caption")
    if len(text_image) != n_texts:
        raise ValueError(f"{len(text_image)} caption owners for {n_texts} captions")
    text_image = text_image.long()
    kmax = max(ks)
    t2i_hits = []  # per caption: rank of its image, capped at kmax
    i2t_vals = torch.empty(n_images, 0, dtype=text_emb.dtype)  # running top-k captions per image
    i2t_idx = torch.empty(n_images, 0, dtype=torch.long)
    step = max(1, _BLOCK // n_images)
    for start in range(0, n_texts, step):
        scores = text_emb[start : start + step] @ image_emb.T  # (m, N)
        top = scores.topk(min(kmax, n_images), dim=1).indices  # (m, k)
        t2i_hits.append(_first_hit(top == text_image[start : start + step, None], kmax))
        vals, idx = scores.T.topk(min(kmax, len(scores)), dim=1)  # (N, k) captions of this block
        i2t_vals, order = torch.cat([i2t_vals, vals], 1).topk(
            min(kmax, i2t_vals.shape[1] + vals.shape[1]), dim=1
        )
        i2t_idx = torch.cat([i2t_idx, idx + start], 1).gather(1, order)
    t2i = torch.cat(t2i_hits)
    i2t = _first_hit(text_image[i2t_idx] == torch.arange(n_images)[:, None], kmax)
    metrics = {}
    for k in ks:
        metrics[f"image_retrieval_recall@{k}"] = _share(t2i < k)
        metrics[f"text_retrieval_recall@{k}"] = _share(i2t < k)
    return metrics


def _first_hit(hits: torch.Tensor, kmax: int) -> torch.Tensor:
    """Per row, the position of the first True among the top-k columns; kmax if none."""
    positions = torch.arange(hits.shape[1]).expand_as(hits)
    return torch.where(hits, positions, kmax).min(dim=1).values


def _share(mask: torch.Tensor) -> float:
    return mask.sum().item() / len(mask)


def class_embeddings(prompt_emb: torch.Tensor, prompt_class: torch.Tensor, n_classes: int):
    """(C, D) zero-shot weights: each class's normalized prompt embeddings, averaged,
    normalized again (CLIP's prompt ensembling). prompt_emb (P, D) is L2-normalized;
    prompt_class (P,) the class of each prompt."""
    sums = torch.zeros(n_classes, prompt_emb.shape[1], dtype=prompt_emb.dtype)
    sums.index_add_(0, prompt_class.long(), prompt_emb)
    counts = torch.bincount(prompt_class.long(), minlength=n_classes).clamp(min=1)
    means = sums / counts[:, None].to(prompt_emb.dtype)
    return means / means.norm(dim=1, keepdim=True)


def topk_accuracy(logits: torch.Tensor, targets: torch.Tensor, ks: Sequence[int]) -> list[float]:
    """Share of rows whose target is among the k highest logits, for each k."""
    top = logits.topk(max(ks), dim=1).indices  # (N, kmax)
    rank = _first_hit(top == targets.long()[:, None], max(ks))
    return [_share(rank < k) for k in ks]


def mean_per_class_recall(predictions: torch.Tensor, targets: torch.Tensor) -> float:
    """Recall of each class that occurs in `targets`, averaged (sklearn's balanced accuracy)."""
    targets = targets.long()
    n = int(max(targets.max(), predictions.max())) + 1
    support = torch.bincount(targets, minlength=n).double()
    correct = torch.bincount(targets[predictions.long() == targets], minlength=n).double()
    present = support > 0
    return (correct[present] / support[present]).mean().item()


def zeroshot_metrics(logits: torch.Tensor, targets: torch.Tensor, n_classes: int) -> dict:
    """acc1, acc5 (NaN under 5 classes, as clip_benchmark) and mean_per_class_recall.
    logits (N, C) are image-class similarities; targets (N,) class indices."""
    if len(logits) == 0:
        raise ValueError("zero-shot classification needs at least one image")
    if n_classes >= 5:
        acc1, acc5 = topk_accuracy(logits, targets, (1, 5))
    else:
        (acc1,), acc5 = topk_accuracy(logits, targets, (1,)), float("nan")
    recall = mean_per_class_recall(logits.argmax(dim=1), targets)
    return {"acc1": acc1, "acc5": acc5, "mean_per_class_recall": recall}
