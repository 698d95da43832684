"""Every dataset form reads into the same records: image path + captions or class."""

import json

import pytest

from tests.eval.tiny import write_caption_csv, write_class_folders
from vecap_cli.errors import VecapError
from vecap_cli.eval.data import DataSpec, captions_of, class_of, detect, open_dataset
from vecap_cli.stream.tally import Tally


def read(*inputs, rank=0, world_size=1, **spec):
    tally = Tally("eval")
    dataset = open_dataset(DataSpec(tuple(map(str, inputs)), **spec), tally, rank, world_size)
    return [s.record for s in dataset.samples], dataset, tally


def test_csv_groups_captions_by_image_in_first_seen_order_and_unquotes(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text(
        'image,caption\na.jpg,"A dog , running"\nb.jpg,two\na.jpg,three, unquoted, commas\n'
        "broken-row\n"
    )
    records, dataset, tally = read(path)
    assert dataset.format == "csv"
    assert records == [
        {
            "key": "a.jpg",
            "image": "a.jpg",
            "captions": ["A dog , running", "three, unquoted, commas"],
        },
        {"key": "b.jpg", "image": "b.jpg", "captions": ["two"]},
    ]
    assert (tally.n_in, dict(tally.rejected)) == (3, {"bad-row": 1})


def test_csv_images_resolve_against_image_root(tmp_path):
    path = write_caption_csv(tmp_path, 2)
    spec = DataSpec((str(path),), image_root=str(tmp_path / "images"))
    sample = next(iter(open_dataset(spec, Tally("eval")).samples))
    assert sample.image_bytes() == (tmp_path / "images" / "0000.png").read_bytes()


def test_image_folders_are_classes_in_sorted_order(tmp_path):
    write_class_folders(tmp_path, ["dog", "cat"], 2)
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    records, dataset, _ = read(tmp_path)
    assert dataset.classnames == ["cat", "dog"]
    assert [(r["image"], r["cls"]) for r in records] == [
        ("cat/0.jpg", 0), ("cat/1.jpg", 0), ("dog/0.jpg", 1), ("dog/1.jpg", 1),
    ]  # fmt: skip


def test_coco_caption_json(tmp_path):
    path = tmp_path / "captions_val.json"
    path.write_text(json.dumps({
        "images": [{"id": 7, "file_name": "x.jpg"}, {"id": 9, "file_name": "y.jpg"}],
        "annotations": [{"image_id": 9, "caption": "b"}, {"image_id": 7, "caption": "a"},
                        {"image_id": 7, "caption": "a2"}],
    }, indent=1))  # fmt: skip
    records, dataset, _ = read(path)
    assert dataset.format == "coco"
    assert records == [
        {"key": "7", "image": "x.jpg", "captions": ["a", "a2"]},
        {"key": "9", "image": "y.jpg", "captions": ["b"]},
    ]


def test_karpathy_json_keeps_the_split_asked_for(tmp_path):
    path = tmp_path / "dataset_flickr8k.json"
    images = [
        {"filename": f"{i}.jpg", "split": split, "imgid": i, "sentences": [{"raw": f"c{i}"}]}
        for i, split in enumerate(["train", "test", "val", "test"])
    ]
    path.write_text(json.dumps({"dataset": "flickr8k", "images": images}))
    records, _, _ = read(path)
    assert [(r["image"], r["captions"]) for r in records] == [("1.jpg", ["c1"]), ("3.jpg", ["c3"])]
    assert len(read(path, split="all")[0]) == 4


def test_jsonl_and_tar_go_through_the_stream_core(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"key": "a", "image": "a.png", "captions": ["x", "y"]}\n{"oops\n')
    records, dataset, tally = read(path)
    assert dataset.format == "stream" and records[0]["captions"] == ["x", "y"]
    assert dict(tally.rejected) == {"bad-json": 1}
    assert detect((str(path),)) == "stream"


def test_a_json_file_of_records_is_jsonl_not_coco(tmp_path):
    path = tmp_path / "records.json"
    path.write_text('{"key": "a", "images": 1}\n{"key": "b"}\n')
    assert detect((str(path),)) == "stream"


def test_ranks_split_the_items_without_overlap(tmp_path):
    path = write_caption_csv(tmp_path, 7)
    whole = read(path)[0]
    parts = [read(path, rank=r, world_size=3)[0] for r in range(3)]
    assert sorted(r["key"] for p in parts for r in p) == sorted(r["key"] for r in whole)


@pytest.mark.parametrize(
    ("record", "captions"),
    [
        ({"captions": ["a", " ", 3, "b"]}, ["a", "b"]),
        ({"alt": "one\ntwo\n"}, ["one", "two"]),  # clip_benchmark's wds: a caption per line
        ({"text": "t", "alt": "a"}, ["t"]),
        ({"caption": "c", "alt": "a"}, ["c"]),
        ({"alt": 5}, []),
    ],
)
def test_captions_of(record, captions):
    assert captions_of(record) == captions


def test_class_of():
    assert [class_of({"cls": v}) for v in (3, "4", True, "x", None, -1)] == [
        3,
        4,
        None,
        None,
        None,
        -1,
    ]


def test_structural_problems_are_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(VecapError, match="has no class folders"):
        read(tmp_path / "empty")
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": 3}')
    with pytest.raises(VecapError, match="no 'images' list"):
        read(bad)
    with pytest.raises(VecapError, match="is one input"):
        read(tmp_path / "empty", tmp_path / "empty", format="folder")
