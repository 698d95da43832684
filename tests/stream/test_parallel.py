"""--workers: the same run in 2 or 3 processes writes what one writes, byte for
byte (outputs, --rejects, --stats), resumes as one does, and fails in one line."""

import gzip
import io
import os
import random
import shutil
import signal
import tarfile
import zlib

import orjson
import pytest

from tests.conftest import make_records, tiny_image
from vecap_cli.errors import StrictError, VecapError
from vecap_cli.stream import batches, parallel
from vecap_cli.stream.runner import StreamOptions, run_stream
from vecap_cli.stream.sinks import ShardedSink

PARENT = os.getpid()


@pytest.fixture(autouse=True)
def small_batches(monkeypatch):
    """Batches of a few records, so that even a small input is many batches."""
    monkeypatch.setattr(batches, "BATCH_BYTES", 700)
    monkeypatch.setattr(batches, "BATCH_SAMPLES", 7)


def busy(samples, tally):
    """A stage that does all a stage may: drop, reject, expand, count per record."""
    tally.declare("chosen", keyed=True)
    for sample in samples:
        n = zlib.crc32(sample.key.encode())
        if n % 5 == 1:
            tally.drop("five", sample)
            continue
        if n % 11 == 3:
            tally.reject("eleven", f"{n} is 3 past a multiple of 11", sample)
            continue
        tally.count("chosen", sample, key="vecap" if "vecap" in sample.record else "alt")
        if n % 7 == 0:
            tally.add("twice", sample)
            yield sample.derive({**sample.record, "key": f"{sample.key}_again"})
        yield sample


@pytest.fixture
def pool(tmp_path):
    """JSONL with bad lines, blank lines and images (some missing, one key a tar
    cannot name), as one file and as three shards."""
    records = make_records(240)
    (tmp_path / "img").mkdir()
    rng = random.Random(3)
    lines = []
    for i, record in enumerate(records):
        if i % 9 == 4:
            record["image"] = f"img/{record['key']}.png"
            if i % 27 != 4:  # else missing: the tar writer rejects it
                (tmp_path / record["image"]).write_bytes(tiny_image(rng))
        lines.append(orjson.dumps(record))
        if i % 37 == 5:
            lines.append(b"{not json")
        if i % 53 == 8:
            lines.append(b"   ")
    lines[100] = orjson.dumps({"key": "1.5", "alt": "a dot in a key"})
    data = b"\n".join(lines) + b"\n"
    (tmp_path / "pool.jsonl").write_bytes(data)
    cut = data.split(b"\n")
    for part, (start, stop) in enumerate(((0, 90), (90, 91), (91, len(cut) - 1))):
        (tmp_path / f"part{part}.jsonl").write_bytes(b"".join(c + b"\n" for c in cut[start:stop]))
    return tmp_path


def run(
    pool, workers, stage=busy, inputs=("pool.jsonl",), output="out.jsonl", batch_records=None, **kw
):
    """Runs `stage` into pool/wN/OUTPUT; returns (tally, {name: bytes} of wN)."""
    folder = pool / f"w{workers}"
    opts = StreamOptions(
        inputs=tuple(name if name.startswith("pipe:") else str(pool / name) for name in inputs),
        output=str(folder / output),
        rejects=str(folder / "rejects.jsonl"),
        stats=str(folder / "stats.json"),
        workers=workers,
        **kw,
    )
    tally = run_stream("t", opts, stage, batch_records=batch_records)
    return tally, written(folder)


def written(folder) -> dict[str, bytes]:
    """Every file under `folder`, by its path there; --stats without its time."""
    files = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            data = open(path, "rb").read()
            if name.startswith("stats"):
                stats = orjson.loads(data)
                del stats["seconds"]
                data = orjson.dumps(stats)  # keys in their order
            files[os.path.relpath(path, folder)] = data
    return dict(sorted(files.items()))


CASES = {
    "one JSONL file to one JSONL file": {},
    "to gzip": {"output": "out.jsonl.gz"},
    "to one tar": {"output": "out.tar"},
    "to JSONL shards": {"output": "%03d.jsonl", "shard_size": 17},
    "to tar shards": {"output": "%03d.tar", "shard_size": 17},
    "shards in, shards out": {
        "inputs": ("part0.jsonl", "part1.jsonl", "part2.jsonl"),
        "output": "{shard:03d}.tar",
        "shard_size": 25,
    },
}


@pytest.mark.parametrize("case", CASES)
def test_workers_write_what_one_process_writes(pool, case):
    one, files = run(pool, 1, **CASES[case])
    assert len(files) > 2 and b"eleven" in files["rejects.jsonl"]
    for workers in (2, 3):
        tally, got = run(pool, workers, **CASES[case])
        assert got == files, workers
        assert tally.as_dict().keys() == one.as_dict().keys()
    assert one.balanced and one.n_in == 247


def test_tar_inputs_are_read_here_and_written_alike(pool):
    run(pool, 1, output="shards/%02d.tar", shard_size=40)
    shutil.move(pool / "w1" / "shards", pool / "tars")
    shutil.rmtree(pool / "w1")
    tars = [f"tars/{name}" for name in sorted(os.listdir(pool / "tars")) if name[0] != "."]
    tars.insert(1, "empty.tar")
    (pool / "empty.tar").write_bytes(b"")
    tars.insert(2, "bad.tar")
    (pool / "bad.tar").write_bytes(tar_with_bad_records(30))
    cut = (pool / tars[-1]).read_bytes()
    (pool / "cut.tar").write_bytes(cut[: len(cut) // 2])  # rejected: tar-truncated
    inputs = (*tars, "cut.tar")
    one = run(pool, 1, inputs=inputs, output="again/%03d.tar", shard_size=30)[1]
    for reason in (b"tar-truncated", b"bad-json", b"eleven"):
        assert reason in one["rejects.jsonl"]
    for workers in (2, 3):
        assert run(pool, workers, inputs=inputs, output="again/%03d.tar", shard_size=30)[1] == one


def tar_with_bad_records(n: int) -> bytes:
    """`n` samples; every fourth has a JSON member that does not parse."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for i in range(n):
            data = b"{oops" if i % 4 == 1 else orjson.dumps({"alt": f"bad tar {i}"})
            info = tarfile.TarInfo(f"b{i:03d}.json")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_tar_members_to_jsonl_are_written_here(pool):
    """JSONL output puts a tar's members in files: the sink writes those samples."""
    run(pool, 1, output="pool.tar")
    opts = {"inputs": ("w1/pool.tar",), "images_dir": None}
    for workers in (1, 2):
        images = pool / f"img{workers}"
        opts["images_dir"] = str(images)
        run(pool, workers, output="out.jsonl", **opts)
    assert (pool / "w1" / "out.jsonl").read_bytes().replace(b"img1", b"img2") == (
        pool / "w2" / "out.jsonl"
    ).read_bytes()
    assert sorted(os.listdir(pool / "img1")) == sorted(os.listdir(pool / "img2"))


def test_ranks_split_as_one_process_splits(pool):
    for rank in (0, 1):
        files = [run(pool, w, output=f"r{rank}.jsonl", rank=rank, world_size=2)[1] for w in (1, 3)]
        assert files[0] == files[1]


def test_resume_after_a_crash_with_workers_equals_one_uninterrupted_run(pool, monkeypatch):
    whole = run(pool, 1, output="%04d.tar", shard_size=15)[1]
    write = ShardedSink.write_encoded
    written_before_the_crash = iter(range(12))

    def crashing(sink, block, data):
        if next(written_before_the_crash, None) is None:
            raise KeyboardInterrupt  # the parent stops mid-run, as when killed
        write(sink, block, data)

    monkeypatch.setattr(ShardedSink, "write_encoded", crashing)
    with pytest.raises(KeyboardInterrupt):
        run(pool, 2, output="%04d.tar", shard_size=15)
    monkeypatch.undo()
    done = [name for name in written(pool / "w2") if name.endswith(".tar")]
    assert 0 < len(done) < len([name for name in whole if name.endswith(".tar")])
    resumed, again = run(pool, 2, output="%04d.tar", shard_size=15, resume=True)
    assert again == whole
    assert resumed.balanced


def test_a_job_that_raises_stops_the_run_with_its_error(pool):
    def failing(samples, tally):
        for sample in samples:
            if sample.key == "000150":
                raise VecapError("cannot caption 000150: the server said no")
            yield sample

    with pytest.raises(VecapError, match=r"^cannot caption 000150: the server said no$"):
        run(pool, 2, failing)
    assert not (pool / "w2" / "out.jsonl").exists()


def test_strict_stops_at_the_first_rejection_in_input_order(pool):
    with pytest.raises(StrictError) as one:
        run(pool, 1, strict=True)
    with pytest.raises(StrictError) as two:
        run(pool, 3, strict=True)
    assert str(two.value) == str(one.value)


def test_a_bug_in_a_worker_shows_where_it_happened(pool):
    def buggy(samples, tally):
        for sample in samples:
            yield sample.record["no such field"]

    with pytest.raises(KeyError) as raised:
        run(pool, 2, buggy)
    assert "in the worker process" in str(raised.value.__cause__)
    assert "no such field" in str(raised.value.__cause__)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["killed", "exits"])
def test_a_worker_that_dies_is_one_line_not_a_hang(pool, how):
    def dying(samples, tally):
        for sample in samples:
            if sample.key == "000120" and os.getpid() != PARENT:
                if how == "killed":
                    os.kill(os.getpid(), signal.SIGKILL)
                os._exit(3)
            yield sample

    message = "killed by SIGKILL" if how == "killed" else "exit status 3"
    with pytest.raises(VecapError, match=f"^a worker process died \\({message}.*\\)") as raised:
        run(pool, 2, dying)
    assert "\n" not in str(raised.value)


def test_a_stage_built_per_process_is_built_once_in_each(pool):
    built = []

    def build():
        built.append(os.getpid())
        return busy

    run(pool, 1, parallel.per_process(build))
    assert built == [PARENT]  # a worker's builds happen in the worker: not seen here
    assert run(pool, 2, parallel.per_process(build))[1] == run(pool, 1)[1]


def test_gzip_input_and_stdin_are_cut_into_batches_too(pool):
    one = run(pool, 1)[1]
    (pool / "pool.jsonl.gz").write_bytes(gzip.compress((pool / "pool.jsonl").read_bytes()))
    got = run(pool, 2, inputs=("pool.jsonl.gz",))[1]
    assert got["rejects.jsonl"] == one["rejects.jsonl"].replace(b".jsonl:", b".jsonl.gz:")
    assert got["out.jsonl"] == one["out.jsonl"]
    stdin = io.BytesIO((pool / "pool.jsonl").read_bytes())
    folder = pool / "w3"
    opts = StreamOptions(
        output=str(folder / "out.jsonl"),
        rejects=str(folder / "rejects.jsonl"),
        stats=str(folder / "stats.json"),
        workers=3,
    )
    run_stream("t", opts, busy, stdin=stdin)
    got = written(folder)
    assert got["out.jsonl"] == one["out.jsonl"] and got["stats.json"] == one["stats.json"]
    assert got["rejects.jsonl"] == one["rejects.jsonl"].replace(
        str(pool / "pool.jsonl").encode(), b"-"
    )


def test_tar_output_of_workers_reads_back(pool):
    run(pool, 2, output="out.tar")
    with tarfile.open(pool / "w2" / "out.tar") as tar:
        names = tar.getnames()
    assert "000000.json" in names and any(name.endswith("_again.json") for name in names)


def test_an_input_that_fails_stops_the_run_where_one_process_stops(pool):
    """What the inputs before it gave is written first: the same sealed shards."""
    (pool / "fails.sh").write_text("head -c 3000 part2.jsonl; exit 3\n")
    inputs = ("part0.jsonl", f"pipe:cd {pool} && sh fails.sh")
    for workers in (1, 2):
        with pytest.raises(VecapError, match="exited with status 3"):
            run(pool, workers, inputs=inputs, output="%03d.jsonl", shard_size=17)
    assert written(pool / "w1") == written(pool / "w2")
    assert len([name for name in written(pool / "w1") if name.endswith(".jsonl")]) > 3


@pytest.mark.parametrize("inputs", [("pool.jsonl",), ("pool.tar",)])
def test_a_stage_may_ask_for_batches_of_a_few_records(pool, inputs):
    """caption and rewrite: a model's answer per record, so a few records a batch,
    for small inputs to reach every worker; the same output."""
    from vecap_cli.stream.runner import rank_inputs
    from vecap_cli.stream.tally import Tally

    if inputs == ("pool.tar",):
        run(pool, 1, output="pool.tar")
        shutil.move(pool / "w1" / "pool.tar", pool / "pool.tar")
    name = str(pool / inputs[0])
    cut = list(batches.batches(rank_inputs([name]), Tally("t"), records=3))
    sizes = [len(b.job.samples) if b.data is None else b.data.count(b"\n") for b in cut]
    assert len(cut) > 50 and max(sizes) == 3
    if b := b"".join(b.data for b in cut if b.data is not None):
        assert b == (pool / "pool.jsonl").read_bytes()  # lines whole, none lost or doubled
    output = "out.jsonl" if inputs == ("pool.jsonl",) else "out.tar"
    _, one = run(pool, 1, inputs=inputs, output=output)
    assert run(pool, 2, inputs=inputs, output=output, batch_records=3)[1] == one
