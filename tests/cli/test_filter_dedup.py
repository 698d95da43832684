"""`vecap filter dedup` end to end: flags, the stream contract, the model."""

import orjson
import pytest

from tests.conftest import run_vecap
from tests.steps.filter.images import encoded, generated, near_copies, write_pool
from vecap_cli.stream.runner import iter_samples
from vecap_cli.stream.tally import Tally


@pytest.fixture
def pool(tmp_path):
    """Four photos, three near copies of p1, a lossless copy of p0, a bad line and a
    record whose image is missing."""
    images = generated(4, seed=2)
    records = {f"p{n}": encoded(image) for n, image in enumerate(images)}
    records["z-webp"] = encoded(images[0], "WEBP", lossless=True)
    records |= {f"z-{kind}": data for kind, data in near_copies(images[1]).items()}
    path = write_pool(tmp_path, records)
    with open(path, "ab") as f:
        f.write(b'{bad\n{"key": "gone", "image": "gone.png"}\n')
    return path


def test_exact_and_phash_with_accounting_and_rejects(pool, tmp_path):
    stats, rejects = tmp_path / "stats.json", tmp_path / "rejects.jsonl"
    result = run_vecap(
        "filter", "dedup", pool, "--exact", "--phash-distance", "10",
        "--stats", stats, "--rejects", rejects,
    )  # fmt: skip
    assert result.code == 0, result.err
    assert [r["key"] for r in result.records()] == ["p0", "p1", "p2", "p3"]
    counts = orjson.loads(stats.read_bytes())
    assert counts["in"] == 10 and counts["out"] == 4 and counts["balanced"]
    assert counts["dropped"] == {"duplicate-exact": 1, "duplicate-phash": 3}
    assert counts["rejected"] == {"bad-json": 1, "image-missing": 1}
    lines = [orjson.loads(line) for line in rejects.read_bytes().splitlines()]
    found = {(x["reason"], x.get("record", {}).get("key"), x.get("duplicate_of")) for x in lines}
    assert found == {
        ("duplicate-exact", "z-webp", "p0"),
        ("duplicate-phash", "z-jpeg", "p1"),
        ("duplicate-phash", "z-resized", "p1"),
        ("duplicate-phash", "z-cropped", "p1"),
        ("bad-json", None, None),
        ("image-missing", "gone", None),
    }
    assert "vecap filter dedup: in 10 = out 4 + dropped 4" in result.err


def test_stdin_reads_as_the_file_does(pool):
    from_file = run_vecap("filter", "dedup", "--phash-distance", "10", "-q", pool)
    from_stdin = run_vecap(
        "filter", "dedup", "--phash-distance", "10", "-q", "-",
        stdin=pool.read_bytes(), cwd=pool.parent,
    )  # fmt: skip
    assert from_file.code == from_stdin.code == 0, from_file.err + from_stdin.err
    assert from_file.records() == from_stdin.records()
    assert len(from_file.records()) == 4


def test_tar_in_tar_out(pool, tmp_path):
    tar = run_vecap("filter", "dedup", "--exact", "-q", pool, "--format", "tar")
    assert tar.code == 0, tar.err
    (tmp_path / "in.tar").write_bytes(tar.out)
    again = run_vecap("filter", "dedup", "--phash-distance", "10", "-q", tmp_path / "in.tar")
    assert again.code == 0, again.err
    (tmp_path / "out.tar").write_bytes(again.out)
    back = list(iter_samples([str(tmp_path / "out.tar")], Tally("read")))
    assert [s.key for s in back] == ["p0", "p1", "p2", "p3"]
    assert all(s.image_bytes() for s in back)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ([], "choose a rule"),
        (["--semantic", "0.1"], "--semantic"),
        (["--exact", "--model", "m"], "--model"),
        (["--phash-distance", "64"], "--phash-distance"),
    ],
)
def test_usage_errors_are_one_line(pool, flags, message):
    result = run_vecap("filter", "dedup", pool, *flags)
    assert result.code == 2 and message in result.err
    assert "Traceback" not in result.err


def test_help_says_what_ranks_and_workers_do_not_do():
    result = run_vecap("filter", "dedup", "--help", env={"COLUMNS": "200"})
    assert result.code == 0, result.err
    said = " ".join(result.out.decode().split())
    assert "there is no --workers" in said
    assert "every rank surveys the whole input" in said
    assert "more ranks do not make the survey faster" in said


@pytest.mark.slow  # torch, open_clip and scikit-learn start in a fresh process
def test_semantic_with_a_tiny_model(tmp_path):
    """SemDeDup end to end with a tiny open_clip model built from a config: copies of
    one image's pixels (cosine 1) are dropped, distinct images are not; the kept
    one is the higher scored."""
    from tests.eval.tiny import write_openclip

    config, checkpoint = write_openclip(tmp_path)
    images = generated(5, seed=3)
    records = {f"p{n}": encoded(image) for n, image in enumerate(images)}
    records["a-copy"] = encoded(images[2], "WEBP", lossless=True)
    path = write_pool(tmp_path, records)
    lines = [orjson.loads(x) for x in path.read_bytes().splitlines()]
    for record in lines:
        record["filter"] = {"clip_score": 0.9 if record["key"] == "p2" else 0.1}
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in lines))
    rejects = tmp_path / "rejects.jsonl"
    result = run_vecap(
        "filter", "dedup", path, "--semantic", "1e-5", "--clusters", "2",
        "--model", config, "--pretrained", checkpoint, "--device", "cpu",
        "--rejects", rejects,
        env={"HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert result.code == 0, result.err
    assert [r["key"] for r in result.records()] == ["p0", "p1", "p2", "p3", "p4"]
    (line,) = [orjson.loads(x) for x in rejects.read_bytes().splitlines()]
    assert (line["reason"], line["record"]["key"], line["duplicate_of"]) == (
        "duplicate-semantic",
        "a-copy",
        "p2",
    )
