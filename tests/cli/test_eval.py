"""`vecap eval` as users run it: real files, a fresh process, torchrun for two ranks."""

import csv
import json
import math
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
    write_hf_processor,
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


def test_a_saved_clip_processor_preprocesses_and_stderr_says_so(tmp_path):
    """transformers 5's save_pretrained writes processor_config.json, not
    preprocessor_config.json: the model's own image processor still runs."""
    model = write_hf_clip(tmp_path / "hf-clip")
    processor = write_hf_processor(model)
    write_class_folders(tmp_path / "data", ["cat", "dog", "car", "tree", "boat", "house"], 3)
    result = run_vecap(
        "eval", "--task", "zeroshot", "--model", model, tmp_path / "data", "--templates", "simple"
    )
    assert result.code == 0, result.err
    assert (
        f"vecap eval: preprocessing: the CLIPImageProcessor saved with '{model}' "
        "(resize shortest edge 40 px, crop 32×32 px, mean (0.5, 0.4, 0.3), std (0.2, 0.25, 0.3))"
    ) in result.err.splitlines()

    from vecap_cli.eval.data import DataSpec, open_dataset
    from vecap_cli.eval.models import load_model
    from vecap_cli.eval.prompts import load_templates
    from vecap_cli.eval.tasks import evaluate_zeroshot
    from vecap_cli.stream.tally import Tally

    loaded = load_model(str(model))
    dataset = open_dataset(DataSpec((str(tmp_path / "data"),)), Tally("eval"))
    expected = evaluate_zeroshot(
        loaded.model, loaded.tokenizer,
        lambda image: processor(images=image, return_tensors="pt")["pixel_values"][0],
        dataset.samples, dataset.classnames, load_templates("simple"),
    )  # fmt: skip
    assert orjson.loads(result.out)["metrics"] == pytest.approx(expected, abs=1e-9)


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


def test_compare_into_a_file_is_as_wide_as_its_table_however_many_runs(tmp_path):
    runs = [tmp_path / f"run-{i}.json" for i in range(8)]
    for i, path in enumerate(runs):
        metrics = {"image_retrieval_recall@1": 0.1 + i / 100, "text_retrieval_recall@1": 0.2}
        path.write_text(json.dumps({"dataset": "mini-test", "task": "zeroshot_retrieval",
                                    "metrics": metrics}))  # fmt: skip
    result = run_vecap("eval", "--compare", *runs)
    assert result.code == 0, result.err
    text = result.out.decode()
    assert "…" not in text  # no header or number cut to fit 80 columns
    assert "run-7 (Δ)" in text and "mini-test" in text and "text→image R@1" in text
    assert "17.00 (+7.00)" in text


def test_compare_is_a_command_and_the_flag_its_alias(tmp_path):
    for name, recall in (("alt", 0.055), ("veclip", 0.223)):
        result = {"dataset": "coco", "task": "zeroshot_retrieval",
                  "metrics": {"image_retrieval_recall@1": recall}}  # fmt: skip
        (tmp_path / f"{name}.json").write_text(json.dumps(result))
    alt, veclip = tmp_path / "alt.json", tmp_path / "veclip.json"
    command = run_vecap("eval", "compare", alt, veclip)
    assert command.code == 0, command.err
    assert "+16.80" in command.out.decode()
    assert run_vecap("eval", "--compare", alt, veclip).out == command.out
    assert run_vecap("eval", alt, "--compare", veclip).out == command.out


def test_help_shows_the_evaluation_flags_and_the_commands():
    result = run_vecap("eval", "--help")
    assert result.code == 0
    text = result.out.decode()
    assert "vecap eval [run] [INPUT]..." in text
    for flag in ("--task", "--model", "--classnames", "--recall-k", "--stats"):
        assert flag in text
    panel = text[text.index("Commands") :]
    assert " run " in panel and " compare " in panel


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


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A `vecap train --model vecap-tiny` run of 2 steps: its directory."""
    from tests.train.conftest import shapes_records, write_jsonl

    work = tmp_path_factory.mktemp("train")
    pool = write_jsonl(work / "pool.jsonl", shapes_records(work, 16, seed=2))
    result = run_vecap(
        "train", pool, "-o", work / "run", "--model", "vecap-tiny", "--batch-size", "8",
        "--train-num-samples", "16", "--workers", "0", "-q",
    )  # fmt: skip
    assert result.code == 0, result.err
    return work / "run"


@pytest.fixture(scope="module")
def captions(tmp_path_factory):
    work = tmp_path_factory.mktemp("captions")
    return [write_caption_csv(work, 6, per_image=2), "--image-root", work / "images"]


def test_eval_takes_every_model_name_train_takes(trained, captions, tmp_path):
    """`--model vecap-tiny --pretrained RUN/step_N.pt` and the run directory itself
    are the same weights, the same result."""
    step = trained / "step_00000002.pt"
    by_step = run_vecap(
        "eval", "--task", "retrieval", "--model", "vecap-tiny", "--pretrained", step, *captions,
        "-o", tmp_path / "step.json",
    )  # fmt: skip
    assert by_step.code == 0, by_step.err
    assert "vecap eval: preprocessing: open_clip's for vecap-tiny (32 px, bicubic" in by_step.err
    by_dir = run_vecap(
        "eval", "--task", "retrieval", "--model", trained, *captions, "-o", tmp_path / "dir.json"
    )
    assert by_dir.code == 0, by_dir.err
    step_result, dir_result = (
        orjson.loads((tmp_path / n).read_bytes()) for n in ("step.json", "dir.json")
    )
    assert step_result["metrics"] == dir_result["metrics"]
    assert (step_result["model"], step_result["pretrained"]) == ("vecap-tiny", str(step))
    assert (dir_result["model"], dir_result["pretrained"]) == (str(trained), str(trained))


def test_context_length_overrides_what_the_run_was_trained_with(trained, captions, tmp_path):
    result = run_vecap(
        "eval", "--task", "retrieval", "--model", trained, "--context-length", "64", *captions,
        "-o", tmp_path / "long.json",
    )  # fmt: skip
    assert result.code == 0, result.err
    assert "vecap eval: text positions stretched Long-CLIP's way: 32 -> 64 tokens" in result.err
    bad = run_vecap("eval", "--task", "retrieval", "--model", trained, "--context-length", "1")
    assert bad.code == 2 and "--context-length" in bad.err


def clip_benchmark_build(files: list, output) -> list[dict]:
    """clip_benchmark's own aggregation (`clip_benchmark build FILES --output CSV`), its rows."""
    from argparse import Namespace

    from clip_benchmark.cli import main_build

    main_build(Namespace(files=list(map(str, files)), output=str(output)))
    with open(output, newline="") as f:
        return list(csv.DictReader(f))


def test_clip_benchmark_build_reads_vecap_results_unchanged(trained, captions, tmp_path):
    """Model directories and random weights (no `pretrained`), and NaN metrics, as
    clip_benchmark writes them."""
    write_class_folders(tmp_path / "three", ["cat", "dog", "car"], 2)
    runs = {
        "dir.json": ["--task", "retrieval", "--model", trained, *captions],
        "random.json": ["--task", "retrieval", "--model", "vecap-tiny", *captions],
        "zeroshot.json": [
            "--task", "zeroshot", "--model", trained, tmp_path / "three", "--templates", "simple",
            "--dataset-name", "three",
        ],
    }  # fmt: skip
    for name, args in runs.items():
        result = run_vecap("eval", *args, "-o", tmp_path / name, "-q")
        assert result.code == 0, result.err
    zeroshot = json.loads((tmp_path / "zeroshot.json").read_text())
    assert math.isnan(zeroshot["metrics"]["acc5"])  # top-5 of 3 classes: NaN, as clip_benchmark
    assert zeroshot["language"] == "en"

    rows = clip_benchmark_build([tmp_path / name for name in runs], tmp_path / "benchmark.csv")
    assert [(r["model_fullname"], r["task"], r["language"]) for r in rows] == [
        (f"{trained} {trained}", "zeroshot_retrieval", "en"),
        ("vecap-tiny ", "zeroshot_retrieval", "en"),
        (f"{trained} {trained}", "zeroshot_classification", "en"),
    ]
    assert rows[2]["dataset"] == "three" and rows[2]["acc5"] == "nan"
    assert float(rows[0]["image_retrieval_recall@5"]) == pytest.approx(
        json.loads((tmp_path / "dir.json").read_text())["metrics"]["image_retrieval_recall@5"]
    )


def test_compare_reads_clip_benchmark_result_files_beside_vecap_ones(tmp_path):
    """A result file as `clip_benchmark eval` dumps it (its cli.py `run`: json.dump of
    dataset, model, pretrained, task, metrics, language) pairs with vecap's."""
    metrics = {"acc1": 0.5, "acc5": float("nan"), "mean_per_class_recall": 0.5}
    dump = {
        "dataset": "wds/vtab/cifar10", "model": "ViT-B-32", "pretrained": "laion2b_s34b_b79k",
        "task": "zeroshot_classification", "metrics": metrics, "language": "en",
    }  # fmt: skip
    cb = tmp_path / "wds_vtab_cifar10_laion2b_s34b_b79k_ViT-B-32_en_zeroshot_classification.json"
    with open(cb, "w") as f:
        json.dump(dump, f)
    assert "NaN" in cb.read_text()
    ours = dump | {
        "dataset": "vtab/cifar10", "pretrained": "run/step_00000100.pt",
        "metrics": metrics | {"acc1": 0.625}, "details": {"images": 10000},
    }  # fmt: skip
    from vecap_cli.eval.report import result_json

    (tmp_path / "ours.json").write_bytes(result_json(ours))
    result = run_vecap("eval", "--compare", cb, tmp_path / "ours.json")
    assert result.code == 0, result.err
    lines = result.out.decode().splitlines()
    top1 = [line for line in lines if "top-1" in line]
    assert len(top1) == 1 and "50.00" in top1[0] and "62.50" in top1[0] and "+12.50" in top1[0]
    assert sum("vtab/cifar10" in line for line in lines) == 1  # one group, not two
