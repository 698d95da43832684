"""Known answers on hand-built embeddings: the definitions, checked by hand."""

import math

import pytest
import torch

from vecap_cli.eval import metrics
from vecap_cli.eval.metrics import (
    class_embeddings,
    mean_per_class_recall,
    retrieval_recall,
    topk_accuracy,
    zeroshot_metrics,
)


def at(*degrees: float) -> torch.Tensor:
    """Unit vectors in the plane: cosine similarity falls with the angle between them."""
    rad = torch.tensor(degrees, dtype=torch.float64) * math.pi / 180
    return torch.stack([rad.cos(), rad.sin()], 1).float()


def test_a_perfect_model_finds_everything_at_rank_1():
    images = torch.eye(6)
    texts = torch.cat([images, images, images])  # three exact captions per image
    owners = torch.arange(6).repeat(3)
    assert set(retrieval_recall(images, texts, owners, (1, 5, 10)).values()) == {1.0}


def test_a_fixed_permutation_gives_the_ranks_worked_out_by_hand():
    # Images at 0, 10, 20, 30, 40 degrees; image i's caption sits 1 degree past
    # image perm[i]. Ranks of the true image per caption: 0, 2, 1, 1, 1
    # (e.g. caption 1 at 21 deg: images 2 (1 deg), 3 (9), 1 (11)); ranks of the
    # true caption per image: 0, 2, 1, 2, 1 (image 1 at 10 deg: captions 2, 0, 1).
    perm = [0, 2, 1, 4, 3]
    images = at(0, 10, 20, 30, 40)
    texts = at(*(10 * p + 1 for p in perm))
    got = retrieval_recall(images, texts, torch.arange(5), (1, 2, 3))
    assert got == {
        "image_retrieval_recall@1": 1 / 5,
        "text_retrieval_recall@1": 1 / 5,
        "image_retrieval_recall@2": 4 / 5,
        "text_retrieval_recall@2": 3 / 5,
        "image_retrieval_recall@3": 1.0,
        "text_retrieval_recall@3": 1.0,
    }


def test_an_image_is_found_when_any_of_its_captions_is_in_the_top_k():
    # Image 0 (0 deg) has a caption near image 1 (80 deg) and a good one (5 deg);
    # image 1 (90 deg) has one caption at 85 deg.
    images = at(0, 90)
    texts = at(80, 5, 85)
    got = retrieval_recall(images, texts, torch.tensor([0, 0, 1]), (1,))
    assert got["text_retrieval_recall@1"] == 1.0  # image→text: both images find one of theirs
    assert got["image_retrieval_recall@1"] == 2 / 3  # text→image: the 80 deg caption misses


def test_k_beyond_the_candidates_counts_everything_found():
    got = retrieval_recall(at(0, 90), at(80, 10), torch.tensor([0, 1]), (1, 10))
    assert got["image_retrieval_recall@1"] == 0.0 and got["image_retrieval_recall@10"] == 1.0


def test_scoring_in_blocks_equals_scoring_at_once(monkeypatch):
    gen = torch.Generator().manual_seed(0)
    images = torch.nn.functional.normalize(torch.randn(50, 8, generator=gen), dim=1)
    texts = torch.nn.functional.normalize(torch.randn(230, 8, generator=gen), dim=1)
    owners = torch.randint(0, 50, (230,), generator=gen)
    whole = retrieval_recall(images, texts, owners, (1, 5, 10))
    monkeypatch.setattr(metrics, "_BLOCK", 7 * 50)  # 7 captions per block, last one short
    assert retrieval_recall(images, texts, owners, (1, 5, 10)) == whole
    assert 0 < whole["text_retrieval_recall@5"] < 1


def test_retrieval_without_images_or_captions_is_an_error():
    with pytest.raises(ValueError, match="at least one image"):
        retrieval_recall(torch.empty(0, 2), at(0), torch.tensor([0]))


def test_topk_accuracy_by_hand():
    logits = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.5, 0.3], [0.1, 0.2, 0.7], [0.6, 0.3, 0.1]])
    targets = torch.tensor([0, 2, 2, 2])  # ranks 0, 1, 0, 2
    assert topk_accuracy(logits, targets, (1, 2, 3)) == [0.5, 0.75, 1.0]


def test_mean_per_class_recall_averages_the_classes_present_as_sklearn_does():
    from sklearn.metrics import balanced_accuracy_score

    targets = torch.tensor([0, 0, 0, 1, 1, 3])  # class 2 never occurs, but is predicted
    predictions = torch.tensor([0, 2, 0, 1, 2, 3])
    assert mean_per_class_recall(predictions, targets) == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
    gen = torch.Generator().manual_seed(1)
    targets, predictions = (
        torch.randint(0, 7, (300,), generator=gen),
        torch.randint(0, 9, (300,), generator=gen),
    )
    with pytest.warns(UserWarning):  # sklearn: "y_pred contains classes not in y_true"
        expected = balanced_accuracy_score(targets.numpy(), predictions.numpy())
    assert mean_per_class_recall(predictions, targets) == pytest.approx(expected, abs=1e-12)


def test_zeroshot_top5_is_nan_under_five_classes_as_in_clip_benchmark():
    got = zeroshot_metrics(torch.tensor([[0.1, 0.9], [0.8, 0.2]]), torch.tensor([1, 1]), 2)
    assert got["acc1"] == 0.5 and got["mean_per_class_recall"] == 0.5
    assert math.isnan(got["acc5"])


def test_class_embeddings_average_the_prompts_then_renormalize():
    prompts = at(0, 90, 180, 180)  # class 0: 0 and 90 deg; class 1: 180 twice
    weights = class_embeddings(prompts, torch.tensor([0, 0, 1, 1]), 2)
    assert torch.allclose(weights, at(45, 180), atol=1e-6)
