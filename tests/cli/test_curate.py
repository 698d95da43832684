"""`vecap curate` as users run it: one pass, sharded passes, metadata, report, bad input."""

import os
import random

import orjson
import pytest

from tests.conftest import run_vecap, write_jsonl
from tests.steps.curate.test_metadata import HEADER

WORDS = ["dog", "cat", "red", "cube", "photo", "of", "a", "the", "in", "Paris", "hot", "sky"]
METADATA = ["dog", "cat", "red cube", "photo", "Paris", "hot dog", "sky", "blue sky", "a"]


def make_pool(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    weights = [1 / (rank + 1) for rank in range(len(WORDS))]  # Zipf-like: a head and a tail
    return [
        {"key": f"k{i:05d}", "alt": " ".join(rng.choices(WORDS, weights, k=rng.randint(1, 7)))}
        for i in range(n)
    ]


@pytest.fixture
def pool(tmp_path):
    write_jsonl(tmp_path / "pool.jsonl", make_pool(3000))
    (tmp_path / "meta.json").write_bytes(orjson.dumps(METADATA))
    return tmp_path


def by_key(records):
    return sorted(records, key=lambda r: r["key"])


def test_one_pass_writes_curate_and_accounts_for_every_record(pool):
    stats = pool / "stats.json"
    result = run_vecap(
        "curate", pool / "pool.jsonl", "--metadata", pool / "meta.json", "--t", "300",
        "--stats", stats,
    )  # fmt: skip
    assert result.code == 0, result.err
    out = result.records()
    assert 0 < len(out) < 3000
    for record in out:
        spaced = f" {record['alt']} "
        entries = record["curate"]["entries"]
        assert entries == sorted(set(entries))
        assert all(f" {METADATA[e]} " in spaced for e in entries)
        assert record["curate"]["keep"] is True and 0 < record["curate"]["p"] <= 1
    counts = orjson.loads(stats.read_bytes())
    assert counts["balanced"] and counts["in"] == 3000
    assert set(counts["dropped"]) == {"no-match", "balance"}
    curate = counts["curate"]
    assert curate["t"] == 300 and curate["head"]["entries"] >= 1
    assert curate["head"]["share"] + curate["tail"]["share"] == pytest.approx(1)
    assert counts["kept"] == len(out)
    assert "vecap curate: in 3,000 = out" in result.err


def test_sharded_count_merge_balance_equals_the_one_pass_record_for_record(pool):
    records = make_pool(3000)
    shards = [write_jsonl(pool / f"s{i}.jsonl", records[i::4]) for i in range(4)]
    meta = ("--metadata", pool / "meta.json")
    one = run_vecap("curate", *shards, *meta, "--t", "300", "--seed", "5", "-q")
    assert one.code == 0, one.err
    for rank in (0, 1):
        counted = run_vecap(
            "curate", "count", *shards, *meta, "-o", pool / "counts.json",
            "--rank", rank, "--world-size", 2, "-q",
        )  # fmt: skip
        assert counted.code == 0, counted.err
    merged = run_vecap(
        "curate", "count", "--merge", pool / "counts.rank0.json", pool / "counts.rank1.json",
        "-o", pool / "counts.json", "-q",
    )  # fmt: skip
    assert merged.code == 0, merged.err
    balanced = []
    for rank in (0, 1):
        result = run_vecap(
            "curate", "balance", *shards, *meta, "--counts", pool / "counts.json",
            "--t", "300", "--seed", "5", "--rank", rank, "--world-size", 2, "-q",
        )  # fmt: skip
        assert result.code == 0, result.err
        balanced += result.records()
    assert by_key(balanced) == by_key(one.records())
    assert len(one.records()) < 2500  # balancing did drop records


def test_one_pass_on_two_ranks_keeps_what_one_rank_keeps(pool):
    meta = ("--metadata", pool / "meta.json", "--t", "300", "-q")
    one = run_vecap("curate", pool / "pool.jsonl", *meta)
    ranks = [
        run_vecap("curate", pool / "pool.jsonl", *meta, "--rank", r, "--world-size", 2)
        for r in (0, 1)
    ]
    assert by_key(ranks[0].records() + ranks[1].records()) == by_key(one.records())


def test_saved_counts_are_the_count_commands(pool):
    meta = ("--metadata", pool / "meta.json")
    run_vecap("curate", pool / "pool.jsonl", *meta, "--save-counts", pool / "a.json", "-q")
    counted = run_vecap("curate", "count", pool / "pool.jsonl", *meta, "-q")
    assert counted.code == 0, counted.err
    assert orjson.loads(counted.out) == orjson.loads((pool / "a.json").read_bytes())


def test_keep_all_writes_every_record_marked(pool):
    result = run_vecap(
        "curate", pool / "pool.jsonl", "--metadata", pool / "meta.json", "--t", "300",
        "--keep-all", "-q",
    )  # fmt: skip
    out = result.records()
    assert len(out) == 3000
    kept = [r for r in out if r["curate"]["keep"]]
    assert 0 < len(kept) < 3000
    assert all(
        r["curate"] == {"entries": [], "p": 0.0, "keep": False}
        for r in out
        if not r["curate"]["entries"]
    )


def test_keep_matched_writes_the_matched_pool_with_p_and_draws_nothing(pool):
    meta = ("--metadata", pool / "meta.json", "--t", "300")
    stats = pool / "stats.json"
    matched = run_vecap(
        "curate", pool / "pool.jsonl", *meta, "--keep-matched", "--stats", stats, "-q"
    )
    assert matched.code == 0, matched.err
    marked = {r["key"]: r["curate"] for r in run_vecap(
        "curate", pool / "pool.jsonl", *meta, "--keep-all", "-q").records()}  # fmt: skip
    out = matched.records()
    assert len(out) == sum(1 for c in marked.values() if c["entries"])  # every matched one
    for record in out:
        mark = marked[record["key"]]
        assert record["curate"] == {"entries": mark["entries"], "p": mark["p"]}  # no draw
    counts = orjson.loads(stats.read_bytes())
    assert set(counts["dropped"]) == {"no-match"} and counts["balanced"]
    assert counts["expected_kept"] == pytest.approx(sum(r["curate"]["p"] for r in out), abs=0.01)
    # the sharded passes write the same pool
    run_vecap("curate", "count", pool / "pool.jsonl", *meta[:2], "-o", pool / "c.json", "-q")
    balanced = run_vecap(
        "curate", "balance", pool / "pool.jsonl", *meta, "--counts", pool / "c.json",
        "--keep-matched", "-q",
    )  # fmt: skip
    assert balanced.records() == out


def test_balance_reads_metaclips_count_files_as_its_own(pool):
    import numpy as np

    meta = ("--metadata", pool / "meta.json")
    run_vecap("curate", "count", pool / "pool.jsonl", *meta, "-o", pool / "c.json", "-q")
    counts = orjson.loads((pool / "c.json").read_bytes())
    dense = [0] * len(METADATA)
    for i, c in zip(counts["ids"], counts["counts"], strict=True):
        dense[i] = c
    np.save(pool / "entry_count.npy", np.array(dense, dtype=np.uint64))
    (pool / "entry_counts.json").write_bytes(orjson.dumps(dict(zip(METADATA, dense, strict=True))))
    args = ("curate", "balance", pool / "pool.jsonl", *meta, "--t", "300", "-q", "--counts")
    ours = run_vecap(*args, pool / "c.json")
    for name in ("entry_count.npy", "entry_counts.json"):
        theirs = run_vecap(*args, pool / name)
        assert theirs.code == 0, theirs.err
        assert theirs.records() == ours.records()
    report = run_vecap("curate", "report", pool / "entry_count.npy", "--t", "300", "--no-plot")
    assert report.code == 0 and "not in the file (MetaCLIP's counts)" in report.out.decode()
    (pool / "short.json").write_bytes(orjson.dumps(dense[:-1]))
    short = run_vecap(*args, pool / "short.json")
    assert (short.code, short.err.strip()) == (
        1,
        f"vecap curate: error: '{pool}/short.json' holds {len(METADATA) - 1} counts "
        f"for the {len(METADATA)} entries of '{pool}/meta.json': counts of another metadata list",
    )


def test_help_shows_the_default_and_the_commands():
    group = run_vecap("curate", "--help")
    assert group.code == 0
    text = group.out.decode()
    assert "vecap curate [run] [INPUT]..." in text
    for command in ("run", "metadata", "count", "balance", "report"):
        assert f" {command} " in text
    assert "--metadata" in run_vecap("curate", "run", "--help").out.decode()
    assert "--merge" in run_vecap("curate", "count", "--help").out.decode()


def test_balance_refuses_counts_of_another_metadata(pool):
    (pool / "other.json").write_bytes(orjson.dumps(["dog"]))
    run_vecap("curate", "count", pool / "pool.jsonl", "--metadata", pool / "other.json",
              "-o", pool / "c.json", "-q")  # fmt: skip
    result = run_vecap(
        "curate", "balance", pool / "pool.jsonl", "--metadata", pool / "meta.json",
        "--counts", pool / "c.json",
    )  # fmt: skip
    assert result.code == 1
    assert result.err.startswith(f"vecap curate: error: '{pool}/c.json' was counted with another")
    assert len(result.err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["--t", "0"], "--t"),
        (["--dedup", "key"], "--dedup"),
        (["count"], "--metadata"),
        (["count", "--merge"], "--merge"),
        (["--keep-all", "--keep-matched"], "--keep-matched"),
    ],
)
def test_bad_flags_exit_2_naming_the_flag(pool, args, flag):
    meta = [] if args[0] == "count" else ["--metadata", str(pool / "meta.json")]
    result = run_vecap("curate", *args, *meta, stdin=b"")
    assert result.code == 2, result.err
    assert flag in result.err and "Traceback" not in result.err


def test_bad_metadata_is_one_line(pool):
    (pool / "bad.json").write_bytes(b'["a", 1]')
    result = run_vecap("curate", pool / "pool.jsonl", "--metadata", pool / "bad.json")
    assert (result.code, result.err.strip()) == (
        1,
        f"vecap curate: error: metadata '{pool}/bad.json': entry 1 is a int, not a string",
    )


def test_report_prints_the_distribution_and_draws_it(pool):
    run_vecap("curate", "count", pool / "pool.jsonl", "--metadata", pool / "meta.json",
              "-o", pool / "counts.json", "-q")  # fmt: skip
    result = run_vecap(
        "curate", "report", pool / "counts.json", "--t", "300", "--metadata", pool / "meta.json"
    )
    assert result.code == 0, result.err
    text = result.out.decode()
    assert "head (count >= t)" in text and "'a'" in text  # the top entry, by name
    assert (pool / "counts.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_metadata_command_builds_a_list_curate_reads(tmp_path):
    (tmp_path / "wn").mkdir()
    (tmp_path / "wn" / "data.noun").write_text(
        HEADER + "02084071 05 n 02 dog 0 domestic_dog 0 000 | a dog  \n"
    )
    for name in ("data.verb", "data.adj", "data.adv"):
        (tmp_path / "wn" / name).write_text(HEADER)
    (tmp_path / "corpus.txt").write_text("red cube on a table\n" * 3 + "blue sky\n")
    (tmp_path / "titles.txt").write_text("New_York\n!\n")
    result = run_vecap(
        "curate", "metadata", "--wordnet", tmp_path / "wn", "--corpus", tmp_path / "corpus.txt",
        "--min-count", "3", "--min-pmi", "1", "--titles", tmp_path / "titles.txt",
        "-o", tmp_path / "m.txt",
    )  # fmt: skip
    assert result.code == 0, result.err
    entries = (tmp_path / "m.txt").read_text().splitlines()
    assert entries[:100] == [str(i) for i in range(100)]
    assert entries[100] == "dog" and "New York" in entries and "!" not in entries
    assert {"red", "cube", "table", "blue sky"} <= set(entries)
    assert "entries (numbers 100, wordnet 1, unigrams" in result.err
    write_jsonl(tmp_path / "p.jsonl", [{"key": "1", "alt": "a dog in New York"}])
    curated = run_vecap("curate", tmp_path / "p.jsonl", "--metadata", tmp_path / "m.txt", "-q")
    expected = sorted(entries.index(e) for e in ("a", "dog", "New York"))
    assert curated.records()[0]["curate"]["entries"] == expected


def test_metadata_titles_take_metaclips_pageview_rule_and_its_flags(tmp_path):
    dump = tmp_path / "pageviews-20180419-000000"
    dump.write_text("en Paris 80 0\nen Talk:Paris 90 0\nen Rome 60 0\nen Oslo 40 0\n")
    base = ("curate", "metadata", "--no-wordnet", "--titles", dump, "-q")
    assert run_vecap(*base).records()[0][100:] == ["Paris"]
    loose = run_vecap(*base, "--min-views", "40", "--min-line-views", "0", "--colon-titles")
    assert loose.records()[0][100:] == ["Talk:Paris", "Paris", "Rome", "Oslo"]


def test_metadata_command_without_wordnet_says_how_to_get_it(tmp_path):
    result = run_vecap("curate", "metadata", "--wordnet", tmp_path / "none")
    assert result.code == 1
    assert "wordnet-base" in result.err and len(result.err.strip().splitlines()) == 1


def test_help_loads_no_matching_or_plotting_library():
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from vecap_cli.cli.app import main\n"
        "for args in (['curate', '--help'], ['curate', 'run', '--help']):\n"
        "    try:\n        main(args)\n    except SystemExit:\n        pass\n"
        "print(sorted(m for m in ('ahocorasick', 'numpy', 'matplotlib', 'torch') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_counting_pass_progress_shows_done_of_total_on_a_terminal(tmp_path):
    import re

    from tests.cli.test_app import ETA, _on_a_terminal

    write_jsonl(tmp_path / "pool.jsonl", make_pool(200_000))  # long enough for an ETA
    (tmp_path / "meta.json").write_bytes(orjson.dumps(METADATA))
    total = f"/{os.path.getsize(tmp_path / 'pool.jsonl') / 1e6:.1f}".encode()
    seen = _on_a_terminal(
        "curate", "count", tmp_path / "pool.jsonl", "--metadata", tmp_path / "meta.json",
        "-o", tmp_path / "counts.json",
    )  # fmt: skip
    frames = [f for f in seen.split(b"\r") if b"(counting)" in f]
    assert any(total in f and re.search(ETA, f) for f in frames)
    assert b"vecap curate count: in 200,000" in seen
