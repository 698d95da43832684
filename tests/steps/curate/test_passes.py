"""The passes without the CLI: the one-pass read once (in memory) or twice, beside
count + balance, over files, stdin, tar shards, ranks and a resumed crash."""

import gc
import io
import os
import random
import sys
from types import SimpleNamespace

import orjson
import pytest

from vecap_cli.steps.curate import passes, stages
from vecap_cli.steps.curate.counts import read_counts
from vecap_cli.steps.curate.stages import CurateConfig
from vecap_cli.stream import batches
from vecap_cli.stream.runner import StreamOptions, run_stream
from vecap_cli.stream.tally import Tally

WORDS = ["dog", "cat", "red", "cube", "<b>photo</b>", "of", "a", "the", "in", "Paris", "sky"]
METADATA = ["dog", "cat", "red cube", "photo", "Paris", "hot dog", "sky", "a"]
CONFIG = CurateConfig(html=True, text_filter=True, dedup=("url", "text"), t=40, seed=3)


def pool_lines(n: int = 600) -> bytes:
    rng = random.Random(0)
    lines = []
    for i in range(n):
        record = {"key": f"k{i:04d}", "alt": " ".join(rng.choices(WORDS, k=rng.randint(1, 6)))}
        record["url"] = f"u{rng.randrange(n)}"  # some urls repeat: duplicate-url
        if i % 97 == 5:
            record["alt"] = None  # rejected: no-text
        elif i % 50 == 49:
            record["alt"] = f"  A DOG in\tthe SKY {i % 3}"  # duplicate-text after the first three
        lines.append(orjson.dumps(record))
        if i % 131 == 7:
            lines.append(b"{not json")  # rejected by the reader
    return b"\n".join(lines) + b"\n"


@pytest.fixture
def pool(tmp_path):
    (tmp_path / "pool.jsonl").write_bytes(pool_lines())
    (tmp_path / "meta.json").write_bytes(orjson.dumps(METADATA))
    return tmp_path


def opts(pool, *inputs, **kw) -> StreamOptions:
    kw.setdefault("output", str(pool / "out.jsonl"))
    return StreamOptions(inputs=inputs or (str(pool / "pool.jsonl"),), **kw)


def records(path) -> list[dict]:
    return [orjson.loads(line) for line in open(path, "rb")]


def shards(directory) -> dict[str, bytes]:
    return {n: (directory / n).read_bytes() for n in sorted(os.listdir(directory)) if n[0] != "."}


def counts_of(tally: Tally) -> tuple:
    return tally.n_in, tally.n_out, dict(tally.dropped), dict(tally.rejected)


def test_the_one_pass_keeps_what_count_then_balance_keeps(pool):
    meta = str(pool / "meta.json")
    assert passes.reads_once(opts(pool))
    one = passes.curate(opts(pool), CONFIG, meta, save_counts=str(pool / "saved.json"))
    counted = passes.count(opts(pool, output=str(pool / "counts.json")), CONFIG, meta)
    balanced = passes.balance(
        opts(pool, output=str(pool / "two.jsonl")), CONFIG, meta, str(pool / "counts.json")
    )
    assert records(pool / "out.jsonl") == records(pool / "two.jsonl")
    assert (pool / "saved.json").read_bytes() == (pool / "counts.json").read_bytes()
    assert counts_of(one) == counts_of(balanced) and one.balanced
    assert set(one.dropped) == {
        "no-match", "balance", "text-filter", "duplicate-url", "duplicate-text"
    }  # fmt: skip
    assert dict(one.rejected) == {"bad-json": 5, "no-text": 7}
    assert one.extra["html_cleaned"] == balanced.extra["html_cleaned"] > 0
    assert one.extra["curate"] == balanced.extra["curate"]
    assert counted.n_in == one.n_in
    assert gc.isenabled()


def test_reading_once_or_twice_writes_the_same_shards_and_counts(pool):
    """--resume with nothing to resume reads twice (the counting pass, then the
    record pass replaying it): the same run as reading once."""
    meta = str(pool / "meta.json")
    sharded = {"shard_size": 70, "rejects": None}
    once = passes.curate(opts(pool, output=str(pool / "a/%03d.jsonl"), **sharded), CONFIG, meta)
    twice_opts = opts(pool, output=str(pool / "b/%03d.jsonl"), resume=True, **sharded)
    assert not passes.reads_once(twice_opts)
    twice = passes.curate(twice_opts, CONFIG, meta)
    assert shards(pool / "a") == shards(pool / "b")
    assert counts_of(once) == counts_of(twice)
    assert once.extra == twice.extra


def test_stdin_reads_once_in_memory_or_twice_from_a_spooled_copy(pool, monkeypatch):
    meta = str(pool / "meta.json")
    passes.curate(opts(pool, output=str(pool / "file.jsonl")), CONFIG, meta)
    data = (pool / "pool.jsonl").read_bytes()
    for name, extra in (("once", {}), ("twice", {"world_size": 1, "resume": True})):
        monkeypatch.setattr(sys, "stdin", SimpleNamespace(buffer=io.BytesIO(data)))
        out = pool / f"{name}/%03d.jsonl"
        tally = passes.curate(opts(pool, "-", output=str(out), **extra), CONFIG, meta)
        assert tally.n_in == 605  # 600 records, 5 bad lines
        got = [
            r
            for n in sorted(os.listdir(pool / name))
            if n[0] != "."
            for r in records(pool / name / n)
        ]
        assert got == records(pool / "file.jsonl"), name


def test_tar_inputs_read_twice_and_keep_what_jsonl_keeps(pool):
    meta = str(pool / "meta.json")
    run_stream(
        "t",
        StreamOptions(inputs=(str(pool / "pool.jsonl"),), output=str(pool / "pool.tar")),
        lambda samples, tally: samples,
    )
    tar_opts = opts(pool, str(pool / "pool.tar"), output=str(pool / "from-tar.jsonl"))
    assert not passes.reads_once(tar_opts)
    from_tar = passes.curate(tar_opts, CONFIG, meta)
    passes.curate(opts(pool), CONFIG, meta)
    assert records(pool / "from-tar.jsonl") == records(pool / "out.jsonl")
    assert from_tar.balanced


def test_two_ranks_keep_what_one_keeps(pool):
    meta = str(pool / "meta.json")
    passes.curate(opts(pool), CONFIG, meta)
    kept = []
    for rank in (0, 1):
        out = pool / f"r{rank}.jsonl"
        ranked = opts(pool, output=str(out), rank=rank, world_size=2)
        assert not passes.reads_once(ranked)
        passes.curate(ranked, CurateConfig(t=40, seed=3), meta)
        kept += records(out)
    alone = passes.curate(
        opts(pool, output=str(pool / "alone.jsonl")), CurateConfig(t=40, seed=3), meta
    )
    assert sorted(kept, key=lambda r: r["key"]) == sorted(
        records(pool / "alone.jsonl"), key=lambda r: r["key"]
    )
    assert alone.balanced


def test_a_crash_while_writing_resumes_to_the_same_shards(pool, monkeypatch):
    """A one-pass read once dies while writing; --resume (reading twice) finishes it:
    the shards, the rejects and the counts of an uninterrupted run."""
    meta = str(pool / "meta.json")

    def run(out, **kw):
        where = {"output": str(pool / out / "%03d.jsonl"), "rejects": str(pool / out / "rejects")}
        return passes.curate(opts(pool, shard_size=40, **where, **kw), CONFIG, meta)

    whole = run("a")
    real_balance = stages.balance

    def crashing(*args, **kw):
        for n, sample in enumerate(real_balance(*args, **kw)):
            if n == 100:
                raise KeyboardInterrupt
            yield sample

    monkeypatch.setattr(stages, "balance", crashing)
    with pytest.raises(KeyboardInterrupt):
        run("b")
    assert gc.isenabled()
    assert 0 < len(shards(pool / "b")) - 1 < len(shards(pool / "a")) - 1  # (and rejects)
    monkeypatch.setattr(stages, "balance", real_balance)
    resumed = run("b", resume=True)
    assert shards(pool / "a") == shards(pool / "b")
    assert counts_of(resumed) == counts_of(whole) and resumed.balanced


def test_the_counts_of_two_ranks_merge_into_the_counts_of_one(pool):
    meta = str(pool / "meta.json")
    config = CurateConfig(html=True, text_filter=True)  # (dedup works within a process)
    whole = passes.count(opts(pool, output=str(pool / "c.json")), config, meta)
    for rank in (0, 1):
        passes.count(opts(pool, output=str(pool / "c.json"), rank=rank, world_size=2), config, meta)
    parts = [str(pool / "c.rank0.json"), str(pool / "c.rank1.json")]
    passes.merge(parts, str(pool / "merged.json"), lambda line: None)
    assert read_counts(str(pool / "merged.json")) == read_counts(str(pool / "c.json"))
    assert whole.balanced and whole.n_in == 605


def test_inputs_too_big_to_hold_are_read_twice(pool):
    notes = []
    assert passes.reads_once(opts(pool), available=2**40)
    assert not passes.reads_once(opts(pool), available=100_000, log=notes.append)
    assert notes and notes[0].startswith("note: reading the input twice: holding its records")
    assert passes.reads_once(opts(pool, "-"), available=100_000)  # stdin cannot be sized


WITHOUT_DEDUP = CurateConfig(html=True, text_filter=True, t=40, seed=3)


def _written(folder) -> dict:
    """Every file under `folder`; --stats without its time (its keys kept in order)."""
    files = {}
    for root, _, names in os.walk(folder):
        for name in names:
            data = open(os.path.join(root, name), "rb").read()
            if name == "stats.json":
                data = [(k, v) for k, v in orjson.loads(data).items() if k != "seconds"]
            files[os.path.relpath(os.path.join(root, name), folder)] = data
    return files


@pytest.mark.parametrize(
    ("name", "how"),
    [
        ("one-pass", {}),
        ("read twice", {"output": "%03d.tar", "shard_size": 50, "resume": True}),
        ("keep all", {"output": "%03d.jsonl", "shard_size": 60, "config": CurateConfig(keep_all=True, t=40)}),
        ("count", {"output": "counts.json"}),
        ("balance", {"output": "%03d.jsonl", "shard_size": 60}),
    ],
)  # fmt: skip
def test_workers_curate_what_one_process_curates(pool, monkeypatch, name, how):
    monkeypatch.setattr(batches, "BATCH_BYTES", 2000)  # many batches
    (pool / "pool.jsonl").write_bytes(pool_lines(900))
    meta = str(pool / "meta.json")
    passes.count(opts(pool, output=str(pool / "all.json")), WITHOUT_DEDUP, meta)
    how = dict(how)
    config = how.pop("config", WITHOUT_DEDUP)
    calls = {
        "count": lambda o: passes.count(o, config, meta),
        "balance": lambda o: passes.balance(o, config, meta, str(pool / "all.json")),
    }
    call = calls.get(name, lambda o: passes.curate(o, config, meta, save_counts=o.stats + ".c"))
    runs = []
    for workers in (1, 2, 3):
        folder = pool / f"w{workers}"
        where = {
            "output": str(folder / how.get("output", "out.jsonl")),
            "rejects": str(folder / "rejects.jsonl"),
            "stats": str(folder / "stats.json"),
        }
        call(opts(pool, workers=workers, **{**how, **where}))
        runs.append(_written(folder))
    assert runs[1] == runs[0] and runs[2] == runs[0]
    assert len(runs[0]["rejects.jsonl"].splitlines()) >= 10


def test_dedup_runs_in_one_process_with_a_note(pool):
    meta = str(pool / "meta.json")
    notes = []
    passes.curate(opts(pool, output=str(pool / "one.jsonl")), CONFIG, meta)
    passes.curate(opts(pool, workers=2, log=notes.append), CONFIG, meta)
    assert (pool / "one.jsonl").read_bytes() == (pool / "out.jsonl").read_bytes()
    assert notes[0] == "note: --dedup runs in one process (the first of each duplicate is kept)"
