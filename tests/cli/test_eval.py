"""`vecap eval` as users run it: real files, a fresh process, torchrun for two ranks."""

import csv
import json
import os
import subprocess
import sys

import orjson
import pytest

from tests.conftest import REPO, SHARED_DATA, run_vecap
from tests.eval.tiny import (
    image_bytes,
    write_caption_csv,
    write_class_folders,
    write_hf_clip,
    write_openclip,
)

FLICKR8K = SHARED_DATA / "flickr8k"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    config, checkpoint = write_openclip(tmp_path_factory.mktemp("model"))
    return ["--model", str(config), "--pretrained", str(checkpoint)]


def no_traceback(result):
    assert "Traceback" not in result.err, result.err


@pytest.mark.skipif(not FLICKR8K.is_dir(), reason="../shared/data/flickr8k is absent")
def test_retrieval_on_flickr8k_writes_clip_benchmark_json(tiny, tmp_path):
    with open(FLICKR8K / "captions.csv", newline="") as f:
        rows = list(csv.reader(f))[: 1 + 5 * 60]
    with open(tmp_path / "flickr8k-60.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    out, stats = tmp_path / "r.json", tmp_path / "stats.json"
    result = run_vecap(
        "eval", "--task", "retrieval", *tiny, tmp_path / "flickr8k-60.csv",
        "--image-root", FLICKR8K / "images", "--dataset-name", "flickr8k-60",
        "-o", out, "--stats", stats,
    )  # fmt: skip
    assert result.code == 0, result.err
    assert result.out == b""  # the JSON went to -o
    got = orjson.loads(out.read_bytes())
    assert {k: got[k] for k in ("dataset", "model", "task")} == {
        "dataset": "flickr8k-60", "model": "vecap-tiny-vit", "task": "zeroshot_retrieval",
    }  # fmt: skip
    assert got["details"]["images"] == 60 and got["details"]["texts"] == 300
    for way in ("image", "text"):
        recall = [got["metrics"][f"{way}_retrieval_recall@{k}"] for k in (1, 5, 10)]
        assert 0 <= recall[0] <= recall[1] <= recall[2] <= 1
    counts = orjson.loads(stats.read_bytes())
    assert (counts["in"], counts["out"], counts["balanced"]) == (60, 60, True)
    assert "image→text R@10" in result.err and "vecap eval: in 60 = out 60" in result.err


def test_a_hugging_face_clip_directory_through_the_cli(tmp_path):
    model = write_hf_clip(tmp_path / "hf-clip")
    write_class_folders(tmp_path / "data", ["cat", "dog", "car", "tree", "boat", "house"], 3)
    (tmp_path / "templates.txt").write_text("a photo of a {c}\na {c} in the house\n")
    result = run_vecap(
        "eval", "--task", "zeroshot", "--model", model, tmp_path / "data",
        "--templates", tmp_path / "templates.txt", "-q",
    )  # fmt: skip
    assert result.code == 0, result.err
    assert result.err == ""  # -q
    got = orjson.loads(result.out)

    from vecap_cli.eval.data import DataSpec, open_dataset
    from vecap_cli.eval.models import load_model
    from vecap_cli.eval.tasks import evaluate_zeroshot
    from vecap_cli.stream.tally import Tally

    loaded = load_model(str(model))
    dataset = open_dataset(DataSpec((str(tmp_path / "data"),)), Tally("eval"))
    expected = evaluate_zeroshot(
        loaded.model, loaded.tokenizer, loaded.preprocess, dataset.samples,
        dataset.classnames, ["a photo of a {c}", "a {c} in the house"],
    )  # fmt: skip
    assert got["metrics"] == pytest.approx(expected, abs=1e-9)
    assert got["details"] | {"seconds": 0} == {
        "images": 18, "classes": 6, "prompts": 12, "seconds": 0, "vecap": got["details"]["vecap"],
    }  # fmt: skip


def test_bad_records_are_counted_rejections_and_the_run_goes_on(tiny, tmp_path):
    import random

    rng = random.Random(0)
    lines = []
    for i in range(4):
        (tmp_path / f"{i}.png").write_bytes(image_bytes(rng))
        lines.append(orjson.dumps({"key": f"k{i}", "image": f"{i}.png", "cls": i % 2}))
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    lines += [
        orjson.dumps({"key": "undecodable", "image": "bad.jpg", "cls": 0}),
        orjson.dumps({"key": "out-of-range", "image": "0.png", "cls": 7}),
        b"{not json",
    ]
    (tmp_path / "pool.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    (tmp_path / "names.txt").write_text("cat\ndog\n")
    rejects, stats = tmp_path / "rejects.jsonl", tmp_path / "stats.json"
    result = run_vecap(
        "eval", "--task", "zeroshot", *tiny, tmp_path / "pool.jsonl", "--classnames",
        tmp_path / "names.txt", "--templates", "simple", "--rejects", rejects, "--stats", stats,
    )  # fmt: skip
    assert result.code == 0, result.err
    reasons = [orjson.loads(line)["reason"] for line in rejects.read_bytes().splitlines()]
    assert sorted(reasons) == ["bad-class", "bad-image", "bad-json"]
    counts = orjson.loads(stats.read_bytes())
    assert (counts["in"], counts["out"], counts["balanced"]) == (7, 4, True)
    assert counts["metrics"]["acc5"] is None  # NaN (2 classes) is null in JSON
    assert "vecap eval: in 7 = out 4 + dropped 0 + rejected 3 (" in result.err


def test_an_empty_dataset_is_one_line(tiny):
    result = run_vecap("eval", "--task", "retrieval", *tiny, stdin=b"")
    assert (result.code, result.err.strip()) == (1, "vecap eval: error: no samples to evaluate")


def test_missing_task_and_unreadable_flags_are_usage_errors(tiny, tmp_path):
    result = run_vecap("eval", *tiny, tmp_path)
    assert result.code == 2 and "--task" in result.err
    no_traceback(result)


def test_compare_prints_runs_side_by_side_with_deltas(tmp_path):
    base = {"dataset": "coco", "model": "ViT-B-16", "pretrained": "alt.pt", "task": "zeroshot_retrieval",
            "metrics": {"image_retrieval_recall@1": 0.055, "text_retrieval_recall@1": 0.1}}  # fmt: skip
    veclip = base | {"metrics": {"image_retrieval_recall@1": 0.223, "text_retrieval_recall@1": 0.3}}
    (tmp_path / "alt.json").write_text(json.dumps(base))
    (tmp_path / "veclip.json").write_text(json.dumps(veclip))
    # clip_benchmark writes NaN (not JSON's null) for top-5 with few classes
    (tmp_path / "cb.json").write_text(
        '{"dataset": "cifar", "task": "zeroshot_classification", "metrics": {"acc1": 0.5, "acc5": NaN}}'
    )
    result = run_vecap(
        "eval", "--compare", *(tmp_path / f"{n}.json" for n in ("alt", "veclip", "cb"))
    )
    assert result.code == 0, result.err
    text = result.out.decode()
    assert "veclip (Δ)" in text and "text→image R@1" in text
    row = next(line for line in text.splitlines() if "text→image R@1" in line)
    assert "5.50" in row and "22.30" in row and "+16.80" in row
    assert "n/a" in text  # NaN top-5
    bad = run_vecap("eval", "--compare", tmp_path / "nope.json")
    assert (bad.code, bad.err.strip()) == (
        1,
        f"vecap eval: error: cannot read '{tmp_path}/nope.json': No such file or directory",
    )


def test_eval_help_does_not_import_torch():
    code = (
        "import sys\nfrom vecap_cli.cli.app import main\n"
        "try:\n    main(['eval', '--help'])\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('torch', 'open_clip', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_two_gloo_ranks_under_torchrun_give_the_one_rank_result(tiny, tmp_path):
    data = write_caption_csv(tmp_path, 13, per_image=2)
    out = tmp_path / "two.json"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        "-m", "vecap_cli", "eval", "--task", "retrieval", *tiny, str(data),
        "--image-root", str(tmp_path / "images"), "--batch-size", "4", "-o", str(out),
        "--stats", str(tmp_path / "stats.json"),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    two = orjson.loads(out.read_bytes())

    from vecap_cli.eval.data import DataSpec, open_dataset
    from vecap_cli.eval.models import load_model
    from vecap_cli.eval.tasks import evaluate_retrieval
    from vecap_cli.stream.tally import Tally

    loaded = load_model(tiny[1], tiny[3])
    dataset = open_dataset(DataSpec((str(data),), image_root=str(tmp_path / "images")), Tally("e"))
    one = evaluate_retrieval(loaded.model, loaded.tokenizer, loaded.preprocess, dataset.samples, 4)
    assert two["metrics"] == pytest.approx(one, abs=1e-9)
    assert two["details"]["images"] == 13 and two["details"]["texts"] == 26
    per_rank = [orjson.loads((tmp_path / f"stats.rank{r}.json").read_bytes()) for r in (0, 1)]
    assert [s["in"] for s in per_rank] == [7, 6]
    assert "vecap eval: in 13 = out 13 + dropped 0 + rejected 0" in done.stderr.decode()
