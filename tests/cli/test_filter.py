"""vecap filter score / select end to end: sharded runs equal one process, the
two-pass top fraction equals a sort, --resume keeps the histogram, errors are one line.

The runs share this process (torch starts once): `here` calls the CLI's main."""

import random

import orjson
import pytest

from tests.conftest import run_vecap
from tests.eval.tiny import caption, image_bytes, write_openclip
from tests.tiny_models import one_torch_thread
from vecap_cli.cli.app import main


def here(*args) -> int:
    try:
        with one_torch_thread():
            main([str(a) for a in args])
    except SystemExit as exit:
        return exit.code or 0
    return 0


def records(path) -> list[dict]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    """Three JSONL shards of 8 records with images, one of them without text and one
    without an image; and the tiny model's flags."""
    root = tmp_path_factory.mktemp("pool")
    config, checkpoint = write_openclip(root)
    rng = random.Random(0)
    shards = []
    for s in range(3):
        lines = []
        for i in range(8):
            key = f"s{s}-{i}"
            (root / f"{key}.png").write_bytes(image_bytes(rng))
            lines.append({"key": key, "alt": caption(rng), "image": f"{key}.png"})
        shards.append(root / f"in{s}.jsonl")
        shards[-1].write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in lines))
    lines[0].pop("alt")
    lines[1].pop("image")
    shards[-1].write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in lines))
    model = ["--model", config, "--pretrained", checkpoint, "-q"]
    return shards, model


@pytest.fixture(scope="module")
def one(pool, tmp_path_factory):
    """One process over the pool: its output, histogram and stats."""
    shards, model = pool
    out = tmp_path_factory.mktemp("one")
    assert here("filter", *shards, *model, "-o", out / "o.jsonl", "--histogram", out / "h.json",
                "--stats", out / "s.json", "--rejects", out / "r.jsonl") == 0  # fmt: skip
    return out


def test_every_record_is_scored_or_rejected(one):
    stats = orjson.loads((one / "s.json").read_bytes())
    assert (stats["in"], stats["out"], stats["rejected"]) == (
        24,
        22,
        {"no-text": 1, "image-missing": 1},
    )
    assert stats["balanced"] and stats["scored"] == 22
    assert "clip_score_histogram" not in stats  # in its own file
    scores = [r["filter"]["clip_score"] for r in records(one / "o.jsonl")]
    assert len(set(scores)) == 22 and all(-1 <= s <= 1 for s in scores)
    histogram = orjson.loads((one / "h.json").read_bytes())
    assert histogram["n"] == 22
    reasons = [r["reason"] for r in records(one / "r.jsonl")]
    assert reasons == ["no-text", "image-missing"]


def test_ranks_write_what_one_process_writes_and_select_keeps_a_sort(pool, one, tmp_path):
    shards, model = pool
    for rank in (0, 1):
        code = here("filter", *shards, *model, "--rank", rank, "--world-size", 2,
                    "-o", tmp_path / f"o{rank}.jsonl", "--histogram", tmp_path / "h.json")  # fmt: skip
        assert code == 0
    ranked = records(tmp_path / "o0.jsonl") + records(tmp_path / "o1.jsonl")
    whole = records(one / "o.jsonl")
    assert sorted(ranked, key=lambda r: r["key"]) == sorted(whole, key=lambda r: r["key"])

    kept = []
    for rank in (0, 1):
        code = here("filter", "select", tmp_path / f"o{rank}.jsonl", "--keep-fraction", 0.3,
                    "--histogram", tmp_path / "h.rank*.json", "-o", tmp_path / f"k{rank}.jsonl",
                    "-q")  # fmt: skip
        assert code == 0
        kept += records(tmp_path / f"k{rank}.jsonl")
    assert here("filter", "select", one / "o.jsonl", "--keep-fraction", 0.3,
                "--histogram", one / "h.json", "-o", tmp_path / "k.jsonl",
                "--stats", tmp_path / "s.json", "-q") == 0  # fmt: skip
    by_score = sorted(whole, key=lambda r: -r["filter"]["clip_score"])
    top = by_score[:7]  # ceil(0.3 * 22)
    assert {r["key"] for r in kept} == {r["key"] for r in records(tmp_path / "k.jsonl")}
    assert {r["key"] for r in kept} == {r["key"] for r in top}
    stats = orjson.loads((tmp_path / "s.json").read_bytes())
    assert stats["dropped"] == {"below-keep-fraction": 15} and stats["target"] == 7


def test_min_score_drops_below_and_the_histogram_counts_what_is_written(pool, one, tmp_path):
    shards, model = pool
    scores = sorted(r["filter"]["clip_score"] for r in records(one / "o.jsonl"))
    cut = scores[10]
    code = here("filter", *shards, *model, "--min-score", cut, "-o", tmp_path / "o.jsonl",
                "--histogram", tmp_path / "h.json", "--stats", tmp_path / "s.json")  # fmt: skip
    assert code == 0
    stats = orjson.loads((tmp_path / "s.json").read_bytes())
    assert stats["dropped"] == {"clip-score-below": 10} and stats["out"] == 12
    assert orjson.loads((tmp_path / "h.json").read_bytes())["n"] == 12


def test_a_resumed_run_keeps_the_histogram_of_the_finished_shards(pool, one, tmp_path):
    shards, model = pool
    args = ["filter", *shards, *model, "-o", tmp_path / "out" / "%04d.jsonl", "--shard-size", 5,
            "--histogram", tmp_path / "h.json"]  # fmt: skip
    assert here(*args) == 0
    first = (tmp_path / "h.json").read_bytes()
    assert here(*args, "--resume") == 0  # every shard done: nothing scored again
    assert (tmp_path / "h.json").read_bytes() == first
    assert orjson.loads(first)["counts"] == orjson.loads((one / "h.json").read_bytes())["counts"]


def test_select_without_histograms_or_with_a_bad_fraction_is_one_line(one, tmp_path):
    missing = run_vecap("filter", "select", one / "o.jsonl", "--keep-fraction", "0.3",
                        "--histogram", tmp_path / "nope.json")  # fmt: skip
    assert missing.code == 1
    assert missing.err.strip() == (
        f"vecap filter: error: cannot read --histogram '{tmp_path}/nope.json': "
        "No such file or directory"
    )
    bad = run_vecap("filter", "select", one / "o.jsonl", "--keep-fraction", "1.5",
                    "--histogram", one / "h.json")  # fmt: skip
    assert bad.code == 2 and "--keep-fraction" in bad.err and "Traceback" not in bad.err


def test_filter_help_names_its_commands_and_does_not_import_torch():
    code = (
        "import sys\nfrom vecap_cli.cli.app import main\n"
        "try:\n    main(['filter', '--help'])\nexcept SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "score" in done.stdout and "select" in done.stdout and "--min-score" in done.stdout


def test_a_model_that_does_not_load_is_one_line(pool, tmp_path):
    shards, _ = pool
    result = run_vecap("filter", shards[0], "--model", "no-such-model", "-o", tmp_path / "o.jsonl")
    assert result.code == 1
    assert result.err.strip().startswith(
        "vecap filter: error: --model 'no-such-model': not an open_clip architecture"
    )
    assert len(result.err.strip().splitlines()) == 1
