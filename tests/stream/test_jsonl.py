import io

import pytest

from vecap_cli.stream.jsonl import JsonlWriter, parse_record, read_jsonl
from vecap_cli.stream.picker import Picker
from vecap_cli.stream.sample import Sample, Source
from vecap_cli.stream.tally import Tally


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b'{"key": "a", "alt": "x"', "bad-json"),
        (b'{"key": "a", "alt": "\xff\xfe"}', "not-utf8"),
        (b'["key", "a"]', "not-object"),
        (b"42", "not-object"),
        (b'{"alt": "no key"}', "no-key"),
        (b'{"key": null}', "no-key"),
        (b'{"key": ""}', "bad-key"),
        (b'{"key": true}', "bad-key"),
        (b'{"key": [1]}', "bad-key"),
    ],
)
def test_unusable_lines_name_their_reason(line, reason):
    record, got, detail = parse_record(line)
    assert record is None
    assert got == reason
    assert detail


def test_integer_keys_are_kept_as_written():
    record, _, _ = parse_record(b'{"key": 7, "alt": "x"}')
    sample = Sample(record)
    assert sample.key == "7"
    assert record["key"] == 7


def test_reader_skips_blank_lines_and_rejects_bad_ones_with_line_numbers():
    data = b'{"key":"a"}\n\n   \n{oops\n{"key":"b"}\n'
    rejects = io.BytesIO()
    tally = Tally("t", rejects)
    samples = list(read_jsonl(io.BytesIO(data), Source("f.jsonl", "jsonl", ""), tally, Picker()))
    assert [s.key for s in samples] == ["a", "b"]
    assert [s.origin for s in samples] == ["f.jsonl:1", "f.jsonl:5"]
    assert [s.idx for s in samples] == [0, 2]
    assert tally.n_in == 3
    assert dict(tally.rejected) == {"bad-json": 1}
    assert b'"origin":"f.jsonl:4"' in rejects.getvalue()
    assert b'"raw":"{oops"' in rejects.getvalue()


def test_writer_refuses_to_lose_images_without_images_dir():
    from vecap_cli.errors import VecapError

    writer = JsonlWriter(io.BytesIO())
    with pytest.raises(VecapError, match="--images-dir"):
        writer.write(Sample({"key": "a"}, {"jpg": b"\xff\xd8"}))


def test_writer_extracts_members_next_to_the_output(tmp_path):
    out = io.BytesIO()
    writer = JsonlWriter(out, images_dir=str(tmp_path / "imgs"), rel_to=str(tmp_path))
    writer.write(Sample({"key": "k1", "alt": "x"}, {"png": b"PNG", "npy": b"NPY"}))
    line = out.getvalue()
    assert b'"image":"imgs/k1.png"' in line
    assert b'"members":{"npy":"imgs/k1.npy"}' in line
    assert (tmp_path / "imgs" / "k1.png").read_bytes() == b"PNG"
    assert (tmp_path / "imgs" / "k1.npy").read_bytes() == b"NPY"


def test_the_picker_goes_on_from_the_last_record_read_when_reading_stops_early():
    pick, tally = Picker(), Tally("t")
    source = Source("f.jsonl", "jsonl", "")
    reader = read_jsonl(
        io.BytesIO(b'{"key":"a"}\n\n{"key":"b"}\n{"key":"c"}\n'), source, tally, pick
    )
    assert [next(reader).idx, next(reader).idx] == [0, 1]
    reader.close()
    assert pick.ordinal == 1
    assert tally.n_in == 2
    more = list(read_jsonl(io.BytesIO(b'{"key":"d"}\n'), source, tally, pick))
    assert [s.idx for s in more] == [2]
