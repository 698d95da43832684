"""filter score's stage: scores as a direct computation with the same model; the rules'
and --min-score's accounting; bad records rejected, not crashing."""

import io
import random

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from tests.eval.tiny import caption, image_bytes, write_hf_clip, write_openclip
from tests.tiny_models import one_torch_thread
from vecap_cli.eval.models import load_model
from vecap_cli.placement import Placement
from vecap_cli.steps.filter.rules import BasicRules
from vecap_cli.steps.filter.score import ClipScorer, ScoreConfig, score
from vecap_cli.stream.sample import Sample
from vecap_cli.stream.tally import Tally


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    config, checkpoint = write_openclip(root)
    return {
        "openclip": dict(model=str(config), pretrained=str(checkpoint)),
        "hf": dict(model=str(write_hf_clip(root / "hf"))),
    }


def png(width: int, height: int, seed: int) -> bytes:
    rng = random.Random(seed)
    buf = io.BytesIO()
    Image.frombytes("RGB", (width, height), rng.randbytes(width * height * 3)).save(buf, "PNG")
    return buf.getvalue()


def pool(n: int, seed: int = 0) -> list[Sample]:
    rng = random.Random(seed)
    return [
        Sample({"key": f"k{i}", "alt": caption(rng)}, {"png": image_bytes(rng)}, idx=i)
        for i in range(n)
    ]


def run(samples, **fields):
    model = {k: fields.pop(k) for k in ("model", "pretrained") if k in fields}
    config = ScoreConfig(**model, threads=0, device="cpu", **fields)
    tally = Tally("filter")
    with one_torch_thread():
        out = list(score(samples, tally, config, lambda: ClipScorer(config, Placement())))
    tally.n_in = len(samples)
    tally.n_out = len(out)
    return out, tally


@pytest.mark.parametrize("kind", ["openclip", "hf"])
def test_scores_equal_a_direct_computation_with_the_same_model(models, kind):
    samples = pool(7)
    out, tally = run(pool(7), batch_size=3, **models[kind])
    loaded = load_model(**models[kind])
    with torch.no_grad(), one_torch_thread():
        for sample, scored in zip(samples, out, strict=True):
            image = Image.open(io.BytesIO(sample.members["png"])).convert("RGB")
            pixels = loaded.preprocess(image)[None]
            a = F.normalize(loaded.model.encode_image(pixels), dim=-1)
            b = F.normalize(
                loaded.model.encode_text(loaded.tokenizer([sample.record["alt"]])), dim=-1
            )
            expected = (a * b).sum().item()
            assert scored.record["filter"]["clip_score"] == pytest.approx(expected, abs=2e-6)
    assert tally.balanced and len(out) == 7


def test_the_batch_size_does_not_change_a_score(models):
    one, _ = run(pool(5), batch_size=1, **models["openclip"])
    five, _ = run(pool(5), batch_size=5, **models["openclip"])
    assert [s.record for s in one] == [s.record for s in five]


def shaped() -> list[Sample]:
    sizes = [(300, 90), (70, 220), (200, 600), (96, 96), (96, 96), (96, 96)]
    samples = pool(len(sizes))
    for i, (sample, (w, h)) in enumerate(zip(samples, sizes, strict=True)):
        sample.members = {"png": png(w, h, i)}
    samples[3].record["alt"] = "a dog"  # 2 words
    samples[4].record["filter"] = {"other": 1}  # kept beside the score
    return samples


def test_min_score_and_the_basic_rules_are_counted_and_balance(models):
    plain, _ = run(shaped(), **models["openclip"])
    scores = {s.key: s.record["filter"]["clip_score"] for s in plain}
    cut = sorted(scores[k] for k in ("k2", "k4", "k5"))[1]  # drops the lowest of the three
    # 70x220 under --min-side 80; 300x90 (3.33:1) over 3; 200x600 (3:1) kept, as DataComp
    rules = BasicRules(min_side=80, max_aspect=3.0, text_filter=True)
    out, tally = run(shaped(), rules=rules, min_score=cut, **models["openclip"])
    assert tally.dropped == {
        "aspect-ratio": 1,
        "image-too-small": 1,
        "text-filter": 1,
        "clip-score-below": 1,
    }
    assert [s.record["filter"]["clip_score"] for s in out] == [scores[s.key] for s in out] and all(
        scores[s.key] >= cut for s in out
    )
    assert len(out) == 2 and tally.balanced
    assert all(s.record["filter"]["other"] == 1 for s in out if s.key == "k4")


def test_bad_records_are_rejected_under_their_reasons(models, tmp_path):
    samples = pool(6)
    samples[5].record["alt"] = ["two captions", "from caption --n"]
    samples[0].record.pop("alt")
    samples[1].record["alt"] = "   "
    samples[2].members = {}  # no image at all
    samples[3].members = {"png": b"not an image"}
    samples[4].record["filter"] = "hostile"
    out, tally = run(samples, **models["openclip"])
    assert out == []
    assert tally.rejected == {
        "no-text": 2,
        "image-missing": 1,
        "bad-image": 1,
        "filter-not-object": 1,
        "text-list": 1,
    }


def test_a_missing_model_is_one_line():
    from vecap_cli.errors import VecapError

    with pytest.raises(VecapError, match="not an open_clip architecture"):
        ClipScorer(ScoreConfig(model="no-such-model", device="cpu"), Placement())


def test_the_rules_see_the_image_s_own_size_not_a_reduced_decode():
    from vecap_cli.steps.filter.score import _image
    from vecap_cli.stream.images import ImageLimits

    buf = io.BytesIO()
    Image.new("RGB", (800, 200), (10, 200, 30)).save(buf, "JPEG")
    # 160,000 pixels over a 40,000 cap: decoded at 1/2 scale (400x100), yet 800x200
    image, size = _image(buf.getvalue(), ImageLimits(max_pixels=40_000))
    assert image.size == (400, 100) and size == (800, 200)
    assert BasicRules(max_aspect=3.0).image(*size)[0] == "aspect-ratio"
    assert BasicRules(min_side=100).image(*size) is None
