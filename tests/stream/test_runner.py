"""run_stream end to end, in process: carriers, shards, resume, ranks, accounting."""

import gzip
import io
import os
import tarfile

import orjson
import pytest

from tests.conftest import make_records, write_jsonl
from vecap_cli.errors import VecapError
from vecap_cli.stream.runner import StreamOptions, iter_samples, run_stream, split_inputs
from vecap_cli.stream.tally import Tally


def passthrough(samples, tally):
    yield from samples


def drop_odd(samples, tally):
    for sample in samples:
        if int(sample.key) % 2:
            tally.drop("odd", sample)
            continue
        yield sample


def read_jsonl(path):
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        return [orjson.loads(line) for line in f]


def read_tar_keys(path):
    with tarfile.open(path) as tar:
        return [m.name.split(".")[0] for m in tar if m.name.endswith(".json")]


@pytest.fixture
def pool(tmp_path):
    return write_jsonl(tmp_path / "pool.jsonl", make_records(95))


def test_gzip_jsonl_in_and_out(tmp_path, pool):
    gz = tmp_path / "pool.jsonl.gz"
    gz.write_bytes(gzip.compress(pool.read_bytes()))
    out = tmp_path / "out.jsonl.gz"
    tally = run_stream("t", StreamOptions(inputs=(str(gz),), output=str(out)), passthrough)
    assert read_jsonl(out) == read_jsonl(pool)
    assert (tally.n_in, tally.n_out) == (95, 95)
    assert not (tmp_path / "out.jsonl.gz.tmp").exists()


def test_shards_hold_shard_size_samples_and_no_temp_files(tmp_path, pool):
    opts = StreamOptions(inputs=(str(pool),), output=str(tmp_path / "out/%03d.tar"), shard_size=20)
    tally = run_stream("t", opts, drop_odd)
    names = sorted(os.listdir(tmp_path / "out"))
    assert names == [".vecap-progress-0-of-1.json", "000.tar", "001.tar", "002.tar"]
    assert [len(read_tar_keys(tmp_path / "out" / n)) for n in names[1:]] == [20, 20, 8]
    assert tally.balanced and dict(tally.dropped) == {"odd": 47}


def test_brace_and_glob_inputs_read_in_order(tmp_path):
    for i in range(3):
        write_jsonl(tmp_path / f"p{i}.jsonl", [{"key": f"{i}-{j}"} for j in range(2)])
    out = tmp_path / "o.jsonl"
    run_stream(
        "t",
        StreamOptions(
            inputs=(str(tmp_path / "p{0..1}.jsonl"), str(tmp_path / "p2*")), output=str(out)
        ),
        passthrough,
    )
    assert [r["key"] for r in read_jsonl(out)] == ["0-0", "0-1", "1-0", "1-1", "2-0", "2-1"]


def test_pipe_input(tmp_path, pool):
    out = tmp_path / "o.jsonl"
    run_stream("t", StreamOptions(inputs=(f"pipe:cat {pool}",), output=str(out)), passthrough)
    assert read_jsonl(out) == read_jsonl(pool)


def test_failing_pipe_is_a_clear_error(tmp_path):
    with pytest.raises(VecapError, match="exited with status 3"):
        run_stream(
            "t",
            StreamOptions(inputs=("pipe:exit 3",), output=str(tmp_path / "o.jsonl")),
            passthrough,
        )
    assert not (tmp_path / "o.jsonl").exists()


def test_missing_and_unmatched_inputs_name_the_input(tmp_path):
    with pytest.raises(VecapError, match=r"cannot read '.*nope.jsonl': no such file"):
        run_stream("t", StreamOptions(inputs=(str(tmp_path / "nope.jsonl"),)), passthrough)
    with pytest.raises(VecapError, match="no input file matches"):
        run_stream("t", StreamOptions(inputs=(str(tmp_path / "*.tar"),)), passthrough)


def test_unwritable_output_names_the_path(tmp_path, pool):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(VecapError, match=f"cannot write '{blocker}/out.jsonl'"):
        run_stream(
            "t", StreamOptions(inputs=(str(pool),), output=str(blocker / "out.jsonl")), passthrough
        )


def test_empty_input_gives_an_empty_but_valid_output_and_a_warning(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    lines = []
    out = tmp_path / "o.tar"
    tally = run_stream(
        "t", StreamOptions(inputs=(str(empty),), output=str(out), log=lines.append), passthrough
    )
    assert tally.n_in == 0 and tally.balanced
    with tarfile.open(out) as tar:
        assert tar.getmembers() == []
    assert lines == [f"warning: '{empty}' is empty"]


def _crash_after(n):
    def stage(samples, tally):
        for i, sample in enumerate(samples):
            if i == n:
                raise KeyboardInterrupt
            yield sample

    return stage


def test_resume_after_a_crash_equals_an_uninterrupted_run(tmp_path):
    records = make_records(200)
    for i in range(0, 200, 17):
        records[i] = "not an object"  # rejected: must be neither lost nor duplicated
    pool = tmp_path / "pool.jsonl"
    pool.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))

    def opts(out, **kw):
        return StreamOptions(
            inputs=(str(pool),),
            output=str(out / "%04d.tar"),
            shard_size=15,
            rejects=str(out / "rejects.jsonl"),
            stats=str(out / "stats.json"),
            **kw,
        )

    whole = run_stream("t", opts(tmp_path / "a"), drop_odd)
    with pytest.raises(KeyboardInterrupt):
        run_stream("t", opts(tmp_path / "b"), lambda s, t: _crash_after(70)(drop_odd(s, t), t))
    done = sorted(p for p in os.listdir(tmp_path / "b") if p.endswith(".tar"))
    assert 0 < len(done) < len(sorted(p for p in os.listdir(tmp_path / "a") if p.endswith(".tar")))
    assert not [p for p in os.listdir(tmp_path / "b") if p.endswith(".tmp")]

    resumed = run_stream("t", opts(tmp_path / "b", resume=True), drop_odd)
    for name in os.listdir(tmp_path / "a"):
        if name.endswith(".tar"):
            assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), (
                name
            )
    assert (tmp_path / "a" / "rejects.jsonl").read_bytes() == (
        tmp_path / "b" / "rejects.jsonl"
    ).read_bytes()
    for key in ("in", "out", "dropped", "rejected"):
        assert resumed.as_dict()[key] == whole.as_dict()[key]
    assert resumed.balanced


def test_resume_refuses_shards_of_a_different_command(tmp_path, pool):
    out = str(tmp_path / "o/%02d.jsonl")
    run_stream(
        "t", StreamOptions(inputs=(str(pool),), output=out, shard_size=10), passthrough, "config A"
    )
    with pytest.raises(VecapError, match="different command"):
        run_stream(
            "t",
            StreamOptions(inputs=(str(pool),), output=out, shard_size=10, resume=True),
            passthrough,
            "config B",
        )


def test_resume_needs_sharded_output(tmp_path, pool):
    with pytest.raises(VecapError, match="--resume needs sharded output"):
        run_stream(
            "t",
            StreamOptions(inputs=(str(pool),), output=str(tmp_path / "o.jsonl"), resume=True),
            passthrough,
        )


@pytest.mark.parametrize("n_files", [1, 4])
def test_ranks_split_the_input_without_overlap_or_loss(tmp_path, n_files):
    records = make_records(101)
    inputs = []
    for f in range(n_files):
        inputs.append(str(write_jsonl(tmp_path / f"in{f}.jsonl", records[f::n_files])))
    keys = []
    for rank in range(3):
        out = tmp_path / f"rank{rank}.jsonl"
        opts = StreamOptions(
            inputs=tuple(inputs),
            output=str(out),
            rank=rank,
            world_size=3,
            stats=str(tmp_path / "stats.json"),
        )
        run_stream("t", opts, passthrough)
        keys += [r["key"] for r in read_jsonl(out)]
        assert (tmp_path / f"stats.rank{rank}.json").exists()
    assert sorted(keys) == sorted(r["key"] for r in records)


def test_split_inputs_by_file_when_there_are_enough():
    assert split_inputs(["a", "b", "c", "d"], 1, 2) == (["b", "d"], 0, 1)
    assert split_inputs(["a"], 1, 2) == (["a"], 1, 2)


def test_sharded_ranks_number_their_shards_apart(tmp_path, pool):
    for rank in range(2):
        opts = StreamOptions(
            inputs=(str(pool),),
            output=str(tmp_path / "%03d.jsonl"),
            shard_size=20,
            rank=rank,
            world_size=2,
        )
        run_stream("t", opts, passthrough)
    shards = sorted(p for p in os.listdir(tmp_path) if p.endswith(".jsonl") and p[0].isdigit())
    assert shards == ["000.jsonl", "001.jsonl", "002.jsonl", "003.jsonl", "004.jsonl", "005.jsonl"]
    keys = [r["key"] for s in shards for r in read_jsonl(tmp_path / s)]
    assert sorted(keys) == sorted(r["key"] for r in read_jsonl(pool))


def test_strict_stops_at_the_first_rejection(tmp_path):
    from vecap_cli.errors import StrictError

    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"key":"a"}\n[1]\n{"key":"b"}\n')
    with pytest.raises(StrictError, match=r"bad\.jsonl:2: not-object"):
        run_stream(
            "t",
            StreamOptions(inputs=(str(bad),), output=str(tmp_path / "o.jsonl"), strict=True),
            passthrough,
        )
    assert not (tmp_path / "o.jsonl").exists()


def test_writing_to_dev_null_leaves_the_device_alone(pool):
    import stat

    run_stream("t", StreamOptions(inputs=(str(pool),), output="/dev/null"), passthrough)
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


def test_a_stream_given_for_stdin_reads_as_stdin(tmp_path, monkeypatch):
    """A copy of stdin handed to the core keeps the name '-' and the working directory
    as the base of relative image paths; the core leaves it open for the next pass."""
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    monkeypatch.chdir(tmp_path)
    copy = io.BytesIO(b'{"key":"a","image":"img/a.png"}\n{oops\n')
    rejects = tmp_path / "rejects.jsonl"
    out = tmp_path / "o.tar"
    opts = StreamOptions(inputs=("-",), output=str(out), rejects=str(rejects))
    tally = run_stream("t", opts, passthrough, stdin=copy)
    assert (tally.n_in, tally.n_out) == (2, 1)
    assert orjson.loads(rejects.read_bytes())["origin"] == "-:2"
    with tarfile.open(out) as tar:
        assert tar.extractfile("a.png").read() == b"\x89PNG\r\n\x1a\n"
    copy.seek(0)
    assert [s.origin for s in iter_samples(["-"], Tally("t"), stdin=copy)] == ["-:1"]
