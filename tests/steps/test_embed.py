"""The embed stage on a list of samples with a stand-in teacher: rows land with their
record whatever the batching, and what a record cannot be embedded as is rejected."""

import io
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.eval.tiny import image_bytes
from vecap_cli.steps import embed as stage
from vecap_cli.steps.embed import EmbedConfig, embed
from vecap_cli.stream import teacher as fmt
from vecap_cli.stream.sample import Sample
from vecap_cli.stream.tally import Tally
from vecap_cli.stream.teacher import read_teacher


def _features(view) -> torch.Tensor:
    return torch.tensor([*view.size, float(np.asarray(view).mean()), 1.0])


class Stub:
    """A teacher whose image row is the view's (width, height, mean pixel, 1) and
    whose text row encodes the caption's length: easy to tell apart, unit rows."""

    def __init__(self):
        self.preprocesses = [_features]

    def embed(self, pixels, texts):
        images = F.normalize(pixels[0].float(), dim=-1)
        rows = torch.tensor([[len(t), 1.0, 0.0, 0.0] for t in texts]).reshape(-1, 4)
        return images.numpy(), F.normalize(rows, dim=-1).numpy()


def samples(n: int = 5) -> list[Sample]:
    rng = random.Random(0)
    out = []
    for i in range(n):
        record = {"key": f"r{i}", "alt": "x" * (i + 1), "vec": ["ab", "  ", "abcd"]}
        out.append(Sample(record, {"png": image_bytes(rng, size=20 + i)}))
    return out


def run(items, **flags):
    config = EmbedConfig(models=(("stub", None),), text_keys=("alt", "vec"), threads=0, **flags)
    tally = Tally("embed")
    return list(embed(items, tally, config, Stub)), tally


@pytest.mark.parametrize("batch_size", [1, 3, 64])
def test_rows_stay_with_their_record_in_any_batching(batch_size):
    out, tally = run(samples(), augmentations=2, batch_size=batch_size, seed=3)
    reference, _ = run(samples(), augmentations=2, batch_size=64, seed=3)
    assert [s.key for s in out] == [f"r{i}" for i in range(5)] and tally.n_out == 0
    for sample, same in zip(out, reference, strict=True):
        assert sample.members == same.members
        image, texts = read_teacher(sample)
        assert image.shape == (2, 4)
        assert sorted(texts) == ["alt", "vec"] and texts["vec"].shape == (2, 4)  # blank left out
        lengths = texts["alt"][:, 0] / texts["alt"][:, 1]
        assert round(float(lengths[0])) == len(sample.record["alt"])


def test_a_field_without_captions_is_left_out_and_the_image_still_embedded():
    bare = Sample({"key": "b", "alt": "   ", "vec": [1, None]}, samples(1)[0].members)
    (out,), _ = run([bare], augmentations=1)
    assert out.record["teacher"]["text"] == {} and read_teacher(out)[0].shape == (1, 4)


def test_what_cannot_be_embedded_is_rejected_with_its_reason(monkeypatch):
    items = samples(4)
    items[0].record["teacher"] = {"image": "../x"}
    items[1].members["teacher.img.npy"] = b"from the web"
    items[2].record["vec"] = ["a"] * (stage.MAX_CAPTIONS + 1)
    items[3].members["png"] = b"not an image"
    out, tally = run(items, augmentations=1)
    assert out == []
    assert tally.rejected == {"has-teacher": 2, "too-many-captions": 1, "bad-image": 1}
    monkeypatch.setattr(fmt, "MAX_BYTES", 100)
    out, tally = run(samples(1), augmentations=8)
    assert out == [] and tally.rejected == {"teacher-too-large": 1}


def test_overwrite_replaces_every_teacher_member():
    item = samples(1)[0]
    item.record["teacher"] = {"image": "teacher.old.npy"}
    item.members["teacher.old.npy"] = b"stale"
    (out,), _ = run([item], augmentations=1, overwrite=True)
    assert sorted(e for e in out.members if e.startswith("teacher.")) == [
        "teacher.alt.npy", "teacher.img.npy", "teacher.vec.npy",
    ]  # fmt: skip
    assert out.record["teacher"]["image"] == "teacher.img.npy"


def test_views_are_the_seeded_augmentations():
    from PIL import Image

    from vecap_cli.stream.augment import augment

    (out,), _ = run(samples(1), augmentations=3, seed=11)
    image = Image.open(io.BytesIO(out.members["png"])).convert("RGB")
    for k, row in enumerate(read_teacher(out)[0]):
        view = augment(image, 11, "r0", k)
        want = F.normalize(_features(view), dim=-1).numpy()
        np.testing.assert_allclose(row.astype(np.float32), want, atol=1e-3)
