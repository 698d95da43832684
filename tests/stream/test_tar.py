import io
import tarfile

import orjson
import pytest

from vecap_cli.errors import VecapError
from vecap_cli.stream.picker import Picker
from vecap_cli.stream.sample import Sample, Source
from vecap_cli.stream.tally import Tally
from vecap_cli.stream.tar import TarWriter, member_name_ok, read_tar


def _write(samples, tally=None) -> bytes:
    buf = io.BytesIO()
    writer = TarWriter(buf, tally or Tally("t"))
    for sample in samples:
        writer.write(sample)
    writer.close()
    return buf.getvalue()


def _read(data: bytes, tally=None, name="s.tar"):
    tally = tally or Tally("t")
    return list(read_tar(io.BytesIO(data), Source(name, "tar", ""), tally, Picker())), tally


def _tar(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_round_trip_keeps_record_image_and_unknown_members():
    record = {"key": "a/b1", "alt": "x", "vecap": "y", "cls": 3, "odd": {"k": [1, 2.5]}}
    data = _write([Sample(dict(record), {"webp": b"WEBP", "npy": b"\x00\x01"})])
    [sample], tally = _read(data)
    assert sample.record == record
    assert sample.members == {"webp": b"WEBP", "npy": b"\x00\x01"}
    assert tally.n_in == 1


def test_written_members_are_what_trainers_read():
    data = _write(
        [Sample({"key": "k", "alt": "web text", "text": "chosen", "cls": 7}, {"jpg": b"J"})]
    )
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar}
    assert members["k.txt"] == b"chosen"
    assert members["k.cls"] == b"7"
    assert members["k.jpg"] == b"J"
    assert orjson.loads(members["k.json"])["alt"] == "web text"


def test_same_samples_give_the_same_bytes():
    samples = [Sample({"key": f"{i}", "alt": "x"}, {"png": b"P"}) for i in range(3)]
    assert _write(samples) == _write(samples)


def test_raw_img2dataset_shard_reads_its_caption_as_alt():
    meta = {
        "key": "000000001",
        "url": "http://x/1.jpg",
        "caption": "json caption",
        "status": "success",
    }
    data = _tar(
        [
            ("000000001.jpg", b"JPEG"),
            ("000000001.json", orjson.dumps(meta)),
            ("000000001.txt", b"txt caption"),
            ("000000002.jpg", b"JPEG2"),
            ("000000002.json", orjson.dumps({"key": "000000002", "caption": "only json"})),
        ]
    )
    samples, _ = _read(data)
    assert [s.record["alt"] for s in samples] == ["txt caption", "only json"]
    assert samples[0].record["url"] == "http://x/1.jpg"
    assert samples[0].record["status"] == "success"
    assert samples[0].members == {"jpg": b"JPEG"}


def test_grouping_follows_webdataset_key_rule():
    data = _tar(
        [("dir.v1/abc.seg.png", b"P"), ("dir.v1/abc.json", b'{"alt": "x"}'), ("README", b"no ext")]
    )
    [sample], _ = _read(data)
    assert sample.key == "dir.v1/abc"
    assert sample.members == {"seg.png": b"P"}


def test_truncated_tar_keeps_samples_before_the_damage_and_rejects_the_cut_one():
    full = _write([Sample({"key": f"s{i}", "alt": "x"}, {"png": bytes(3000)}) for i in range(5)])
    rejects = io.BytesIO()
    tally = Tally("t", rejects)
    samples, _ = _read(full[:12000], tally)  # ~5 KiB per sample: s2 is cut
    assert [s.key for s in samples] == ["s0", "s1"]
    assert dict(tally.rejected) == {"tar-truncated": 1}
    assert tally.n_in == 3
    assert b"s2" in rejects.getvalue()


def test_a_file_that_is_not_a_tar_is_a_clear_error():
    with pytest.raises(VecapError, match="not a tar file"):
        _read(b"\x01" * 2048, name="bad.tar")


def test_bad_json_member_is_rejected_not_fatal():
    data = _tar([("a.json", b"{broken"), ("b.json", b'{"alt": "ok"}')])
    samples, tally = _read(data)
    assert [s.key for s in samples] == ["b"]
    assert dict(tally.rejected) == {"bad-json": 1}


@pytest.mark.parametrize(
    ("key", "ok"),
    [
        ("abc", True),
        ("a/b", True),
        ("a.b/c", True),
        ("a.b", False),
        ("../x", False),
        ("/x", False),
        ("", False),
    ],
)
def test_keys_that_cannot_name_members_are_refused(key, ok):
    assert member_name_ok(key) is ok


def test_writer_rejects_a_missing_image_file(tmp_path):
    tally = Tally("t")
    source = Source("in.jsonl", "jsonl", str(tmp_path))
    _write([Sample({"key": "a", "image": "gone.jpg"}, None, 0, source, 1)], tally)
    assert dict(tally.rejected) == {"image-missing": 1}


def test_webdataset_reads_our_shards_and_we_read_its(tmp_path):
    import webdataset as wds

    ours = tmp_path / "ours.tar"
    ours.write_bytes(
        _write([Sample({"key": f"k{i}", "alt": f"cap {i}"}, {"jpg": b"J%d" % i}) for i in range(3)])
    )
    seen = [
        (s["__key__"], s["txt"], s["jpg"]) for s in wds.WebDataset(str(ours), shardshuffle=False)
    ]
    assert seen == [(f"k{i}", f"cap {i}".encode(), b"J%d" % i) for i in range(3)]

    theirs = tmp_path / "theirs.tar"
    with wds.TarWriter(str(theirs)) as sink:
        for i in range(3):
            sink.write(
                {"__key__": f"t{i}", "txt": f"alt {i}", "png": b"P", "json": {"url": f"u{i}"}}
            )
    samples, _ = _read(theirs.read_bytes())
    assert [(s.key, s.record["alt"], s.record["url"], s.members) for s in samples] == [
        (f"t{i}", f"alt {i}", f"u{i}", {"png": b"P"}) for i in range(3)
    ]
