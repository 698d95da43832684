"""The evaluations on a tiny model: bad records are counted rejections, never crashes."""

import random

import orjson
import pytest
import torch

from tests.eval.tiny import caption, image_bytes, write_openclip
from vecap_cli.errors import StrictError, VecapError
from vecap_cli.eval.dist import Group
from vecap_cli.eval.models import load_model
from vecap_cli.eval.tasks import evaluate_retrieval, evaluate_zeroshot
from vecap_cli.placement import Placement
from vecap_cli.stream.sample import Sample, Source
from vecap_cli.stream.tally import Tally


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    config, checkpoint = write_openclip(tmp_path_factory.mktemp("model"))
    return load_model(str(config), str(checkpoint))


def samples(tmp_path, records, images):
    """Samples as the JSONL reader makes them, images as files beside it."""
    for name, data in images.items():
        (tmp_path / name).write_bytes(data)
    source = Source("pool.jsonl", "jsonl", str(tmp_path))
    return [Sample(r, None, i, source, i + 1) for i, r in enumerate(records)]


def retrieval(tiny, items, **kw):
    tally = Tally("eval", **kw)
    return evaluate_retrieval(
        tiny.model, tiny.tokenizer, tiny.preprocess, items, 4, tally=tally
    ), tally


def zeroshot(tiny, items, classnames=("cat", "dog", "car"), **kw):
    tally = Tally("eval", **kw)
    got = evaluate_zeroshot(
        tiny.model,
        tiny.tokenizer,
        tiny.preprocess,
        items,
        list(classnames),
        ["a {c}"],
        4,
        tally=tally,
    )
    return got, tally


def test_bad_records_are_rejected_and_counted_in_retrieval(tiny, tmp_path):
    rng = random.Random(0)
    good = {f"{i}.png": image_bytes(rng) for i in range(6)}
    records = [{"key": str(i), "image": f"{i}.png", "captions": [caption(rng)]} for i in range(6)]
    records += [
        {"key": "broken", "image": "broken.jpg", "alt": "x"},  # does not decode
        {"key": "missing", "image": "gone.png", "alt": "x"},
        {"key": "silent", "image": "0.png"},
    ]
    items = samples(tmp_path, records, {**good, "broken.jpg": b"\xff\xd8 not a jpeg"})
    rejects = tmp_path / "rejects.jsonl"
    with open(rejects, "wb") as stream:
        tally = Tally("eval", rejects=stream)
        evaluate_retrieval(tiny.model, tiny.tokenizer, tiny.preprocess, items, 4, tally=tally)
    assert (tally.n_in, tally.n_out) == (0, 6)  # the reader counts in; here, there is no reader
    assert dict(tally.rejected) == {"bad-image": 1, "image-missing": 1, "no-caption": 1}
    lines = [orjson.loads(line) for line in rejects.read_bytes().splitlines()]
    assert [(r["reason"], r["origin"]) for r in lines] == [
        ("bad-image", "pool.jsonl:7"),
        ("image-missing", "pool.jsonl:8"),
        ("no-caption", "pool.jsonl:9"),
    ]  # in input order, though images decode ahead


def test_class_indices_out_of_range_are_rejected(tiny, tmp_path):
    rng = random.Random(1)
    images = {f"{i}.png": image_bytes(rng) for i in range(5)}
    records = [
        {"key": str(i), "image": f"{i}.png", "cls": c} for i, c in enumerate([0, 1, 2, 3, -1])
    ]
    records.append({"key": "nolabel", "image": "0.png"})
    got, tally = zeroshot(tiny, samples(tmp_path, records, images))
    assert dict(tally.rejected) == {"bad-class": 2, "no-class": 1}
    assert tally.n_out == 3 and tally.extra["images"] == 3
    assert 0 <= got["acc1"] <= 1 and got["acc5"] != got["acc5"]  # NaN: 3 classes


def test_an_empty_dataset_is_one_clear_error(tiny, tmp_path):
    with pytest.raises(VecapError, match=r"^no samples to evaluate$"):
        retrieval(tiny, [])
    broken = samples(tmp_path, [{"key": "b", "image": "b.png", "cls": 0}], {"b.png": b"junk"})
    with pytest.raises(VecapError, match=r"^no samples to evaluate \(1 of 1 rejected\)$"):
        tally = Tally("eval")
        tally.n_in = 1
        evaluate_zeroshot(
            tiny.model, tiny.tokenizer, tiny.preprocess, broken, ["c"], ["{c}"], tally=tally
        )


def test_strict_stops_at_the_first_bad_image(tiny, tmp_path):
    items = samples(tmp_path, [{"key": "b", "image": "b.png", "alt": "x"}], {"b.png": b"junk"})
    with pytest.raises(StrictError, match=r"pool\.jsonl:1: bad-image"):
        retrieval(tiny, items, strict=True)


def test_results_do_not_depend_on_batch_size_or_decoding_threads(tiny, tmp_path):
    rng = random.Random(2)
    images = {f"{i}.png": image_bytes(rng) for i in range(9)}
    records = [
        {"key": str(i), "image": f"{i}.png", "captions": [caption(rng), caption(rng)]}
        for i in range(9)
    ]
    items = samples(tmp_path, records, images)
    runs = [
        evaluate_retrieval(tiny.model, tiny.tokenizer, tiny.preprocess, items, b, workers=w)
        for b, w in ((1, 1), (4, 3), (64, 8))
    ]
    for run in runs[1:]:
        assert run == pytest.approx(runs[0], abs=1e-9)


def test_ranks_that_cannot_meet_fail_in_one_line(monkeypatch):
    for name in ("MASTER_ADDR", "MASTER_PORT"):  # the join sets them: restored after the test
        monkeypatch.setenv(name, "")
    nowhere = Placement(rank=1, world_size=2, master_port="99999999")
    with pytest.raises(VecapError, match=r"^cannot join the process group \(gloo\): port") as err:
        Group.start(nowhere, torch.device("cpu"))
    assert "\n" not in str(err.value)
