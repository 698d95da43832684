"""The live count: off unless stderr is a terminal; updated as records come in."""

from vecap_cli.stream.progress import progress, showing
from vecap_cli.stream.tally import Tally


def test_off_when_stderr_is_not_a_terminal():
    with progress("t", enabled=True) as update:  # pytest captures stderr
        assert update is None


def test_showing_passes_samples_through_and_updates_every_1024():
    tally = Tally("t")
    seen = []

    def read(n):
        for i in range(n):
            tally.n_in += 1
            yield i

    out = list(showing(read(2100), tally, lambda n_in, n_out: seen.append(n_in)))
    assert out == list(range(2100))
    assert seen == [1, 1025, 2049]


# -- how far: bytes of the input files, against bytes read ---------------------

import gzip  # noqa: E402
import io  # noqa: E402
import os  # noqa: E402

import pytest  # noqa: E402

from vecap_cli.stream.progress import Meter, measure  # noqa: E402
from vecap_cli.stream.sources import open_each  # noqa: E402


def test_measure_totals_the_sizes_of_regular_files(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl.gz"
    a.write_bytes(b'{"k": 1}\n' * 10)
    b.write_bytes(gzip.compress(b'{"k": 2}\n' * 1000))
    meter = measure([str(a), str(b)])
    assert meter is not None
    assert meter.sizes == [90, os.path.getsize(b)]  # the .gz as stored, not unpacked
    assert meter.total == 90 + os.path.getsize(b)
    assert meter.done() == 0


@pytest.mark.parametrize(
    "odd", ["-", "pipe:cat x.jsonl", "http://host/a.jsonl", "https://u:p@host/a.jsonl"]
)
def test_no_measure_when_an_input_is_a_stream(tmp_path, odd):
    a = tmp_path / "a.jsonl"
    a.write_bytes(b'{"k": 1}\n')
    assert measure([str(a), odd]) is None


def test_no_measure_for_a_fifo_a_missing_file_or_only_empty_files(tmp_path):
    a, empty, fifo = tmp_path / "a.jsonl", tmp_path / "e.jsonl", tmp_path / "f.jsonl"
    a.write_bytes(b'{"k": 1}\n')
    empty.write_bytes(b"")
    os.mkfifo(fifo)
    assert measure([str(a), str(fifo)]) is None  # a named pipe's size says nothing
    assert measure([str(a), str(tmp_path / "gone.jsonl")]) is None
    assert measure([str(empty)]) is None
    assert measure([]) is None


def test_done_is_the_inputs_before_plus_the_position_in_this_one():
    meter = Meter([10, 20, 30])
    first = io.BytesIO(b"x" * 10)
    meter.reading(0, first)
    first.seek(4)
    assert meter.done() == 4
    second = io.BytesIO(b"x" * 20)
    meter.reading(1, second)
    second.seek(5)
    assert meter.done() == 15
    third = io.BytesIO(b"x" * 30)
    meter.reading(2, third)
    third.seek(30)
    assert (meter.done(), meter.total) == (60, 60)


def test_done_never_goes_back_nor_past_the_total():
    meter = Meter([10, 20])
    raw = io.BytesIO(b"x" * 20)
    meter.reading(1, raw)
    raw.seek(7)
    assert meter.done() == 17
    assert meter.done() == 17
    raw.seek(2)  # a file that shrank since it was measured
    assert meter.done() == 17
    grown = io.BytesIO(b"x" * 100)  # a file that grew since it was measured
    meter.reading(1, grown)
    grown.seek(100)
    assert meter.done() == 30


def test_a_closed_input_counts_whole():
    meter = Meter([10, 20])
    raw = io.BytesIO(b"x" * 20)
    meter.reading(1, raw)
    raw.seek(3)
    assert meter.done() == 13
    raw.close()  # read to its end, or by the feeding thread (--workers)
    assert meter.done() == 30


def test_open_each_tells_the_meter_compressed_positions(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl.gz"
    a.write_bytes(b'{"k": 1}\n' * 1000)
    b.write_bytes(gzip.compress(b'{"k": 2}\n' * 100_000))  # 900 kB unpacked, a few kB stored
    meter = measure([str(a), str(b)])
    seen = []
    for _, stream in open_each([str(a), str(b)], [], lambda line: None, None, meter):
        before = meter.done()
        unpacked = len(stream.read())
        seen.append((before, unpacked, meter.done()))
    assert seen[0][0] < 9000 and seen[0][2] == 9000
    assert seen[1][1] == 900_000
    assert 9000 <= seen[1][0] <= meter.total  # its head peeked at (a small file: all of it)
    assert seen[1][2] == meter.total == 9000 + os.path.getsize(b)  # by what is stored
