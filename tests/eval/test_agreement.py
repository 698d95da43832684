"""Same model, same data: vecap's numbers are clip_benchmark's, metric for metric.

clip_benchmark (a test-only dependency) runs its own evaluation functions on a
torch dataset built from the same files; vecap reads the files itself.
"""

import csv
import os

import pytest
import torch

from tests.conftest import SHARED_DATA
from tests.eval.tiny import write_caption_csv, write_class_folders, write_openclip
from vecap_cli.eval.data import DataSpec, open_dataset
from vecap_cli.eval.models import load_model
from vecap_cli.eval.tasks import evaluate_retrieval, evaluate_zeroshot
from vecap_cli.stream.tally import Tally

pytest.importorskip("clip_benchmark")
FLICKR8K = SHARED_DATA / "flickr8k"
TEMPLATES = ["a photo of a {c}.", "a blurry photo of the {c}.", "art of a {c}"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    config, checkpoint = write_openclip(tmp_path_factory.mktemp("model"))
    return load_model(str(config), str(checkpoint))


class Captioned(torch.utils.data.Dataset):
    """clip_benchmark's retrieval input: (image tensor, [captions]) per image."""

    def __init__(self, csv_path, root, preprocess):
        groups = {}
        with open(csv_path, newline="") as f:
            for image, text in list(csv.reader(f))[1:]:
                groups.setdefault(image, []).append(text)
        self.items, self.root, self.preprocess = list(groups.items()), root, preprocess

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        from PIL import Image

        name, captions = self.items[i]
        return self.preprocess(Image.open(os.path.join(self.root, name)).convert("RGB")), captions


def collate_captions(batch):  # clip_benchmark's image_captions_collate_fn
    return torch.stack([image for image, _ in batch]), [texts for _, texts in batch]


def reference_retrieval(tiny, csv_path, root, batch_size=16):
    from clip_benchmark.metrics import zeroshot_retrieval

    loader = torch.utils.data.DataLoader(
        Captioned(csv_path, root, tiny.preprocess),
        batch_size=batch_size,
        collate_fn=collate_captions,
    )
    return zeroshot_retrieval.evaluate(
        tiny.model, loader, tiny.tokenizer, "cpu", amp=False, recall_k_list=[1, 5, 10]
    )


def ours_retrieval(tiny, csv_path, root, batch_size=16):
    tally = Tally("eval")
    dataset = open_dataset(DataSpec((str(csv_path),), image_root=str(root)), tally)
    got = evaluate_retrieval(
        tiny.model, tiny.tokenizer, tiny.preprocess, dataset.samples, batch_size, "cpu", tally=tally
    )
    return got, tally


def assert_same(ours: dict, reference: dict):
    assert ours.keys() == reference.keys()
    for name, value in reference.items():
        assert ours[name] == pytest.approx(value, abs=1e-6, nan_ok=True), name


def test_retrieval_agrees_with_clip_benchmark(tiny, tmp_path):
    path = write_caption_csv(tmp_path, 40, per_image=3)
    ours, tally = ours_retrieval(tiny, path, tmp_path / "images")
    assert_same(ours, reference_retrieval(tiny, path, tmp_path / "images"))
    assert (tally.n_out, tally.extra["texts"]) == (40, 120)


@pytest.mark.skipif(not FLICKR8K.is_dir(), reason="../shared/data/flickr8k is absent")
def test_retrieval_on_flickr8k_agrees_with_clip_benchmark(tiny, tmp_path):
    with open(FLICKR8K / "captions.csv", newline="") as f:
        rows = list(csv.reader(f))[: 1 + 5 * 150]  # the first 150 images, 5 captions each
    path = tmp_path / "flickr8k-150.csv"
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    ours, tally = ours_retrieval(tiny, path, FLICKR8K / "images", batch_size=64)
    assert_same(ours, reference_retrieval(tiny, path, FLICKR8K / "images", batch_size=64))
    assert (tally.n_out, tally.extra["texts"]) == (150, 750)
    assert ours["text_retrieval_recall@10"] < 0.5  # random weights: near chance (10/150)


def numpy2_safe_accuracy(output, target, topk=(1,)):
    """clip_benchmark 1.6.2's `accuracy`, line for line, but for its last step:
    `float()` of a one-element array, which NumPy >= 2.4 refuses."""
    pred = output.topk(max(topk), 1, True, True)[1].t()
    correct = pred.eq(target.view(1, -1).expand_as(pred))
    n = len(target)
    return [float(correct[:k].reshape(-1).float().sum(0, keepdim=True).item()) / n for k in topk]


def test_zeroshot_agrees_with_clip_benchmark(tiny, tmp_path, monkeypatch):
    from clip_benchmark.metrics import zeroshot_classification
    from torchvision.datasets import ImageFolder

    monkeypatch.setattr(zeroshot_classification, "accuracy", numpy2_safe_accuracy)

    classes = ["cat", "dog", "car", "tree", "boat", "house"]
    write_class_folders(tmp_path, classes, 5)
    tally = Tally("eval")
    dataset = open_dataset(DataSpec((str(tmp_path),)), tally)
    ours = evaluate_zeroshot(
        tiny.model, tiny.tokenizer, tiny.preprocess, dataset.samples,
        dataset.classnames, TEMPLATES, 8, "cpu", tally=tally,
    )  # fmt: skip
    reference_set = ImageFolder(str(tmp_path), transform=tiny.preprocess)
    loader = torch.utils.data.DataLoader(reference_set, batch_size=8)
    reference = zeroshot_classification.evaluate(
        tiny.model, loader, tiny.tokenizer, reference_set.classes, TEMPLATES, "cpu", amp=False
    )
    assert_same(ours, reference)
    assert dataset.classnames == reference_set.classes
    assert {k: tally.extra[k] for k in ("images", "classes", "prompts")} == {
        "images": 30, "classes": 6, "prompts": 18,
    }  # fmt: skip
