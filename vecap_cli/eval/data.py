"""Evaluation datasets as streams of `Sample`s: one image each, with its captions or class.

Forms read:

- webdataset shards and JSONL (the stream carriers, read by the stream core):
  captions in `captions` (a list), else `caption`, `text` or `alt` (the tar
  `txt` member), one caption per line; the class in `cls`;
- an image-folder tree, a class per folder (sorted names, as torchvision's
  ImageFolder numbers them);
- COCO caption JSON (`images` + `annotations`) and Karpathy's `dataset_*.json`
  (`images` with `sentences` and `split`);
- a Flickr-style CSV, `image,caption`, one row per caption.

The adapters yield the same records the stream carries — `{"key", "image",
"captions" | "cls"}` with the image path relative to the image root — so the
evaluation loop is one for every form.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator
from dataclasses import dataclass, field

import orjson

from vecap_cli.errors import VecapError
from vecap_cli.stream.sample import Sample, Source
from vecap_cli.stream.tally import Tally

FORMATS = ("auto", "stream", "folder", "coco", "csv")
FOLDER_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm")
CAPTION_FIELDS = ("captions", "caption", "text", "alt")


@dataclass(frozen=True)
class DataSpec:
    inputs: tuple[str, ...] = ("-",)
    format: str = "auto"
    image_root: str | None = None  # for COCO/Karpathy JSON and CSV: default, the file's directory
    split: str = "test"  # for Karpathy's dataset_*.json


@dataclass
class Dataset:
    """This rank's samples, plus what the form itself says (folder names are class names)."""

    samples: Iterator[Sample]
    format: str
    classnames: list[str] | None = field(default=None)


def open_dataset(
    spec: DataSpec, tally: Tally, rank: int = 0, world_size: int = 1, log=lambda line: None
) -> Dataset:
    kind = detect(spec.inputs) if spec.format == "auto" else spec.format
    if kind == "stream":
        from vecap_cli.stream.runner import iter_samples

        samples = iter_samples(spec.inputs, tally, rank=rank, world_size=world_size, log=log)
        return Dataset(samples, kind)
    if len(spec.inputs) != 1:
        raise VecapError(f"a {kind} dataset is one input, got {len(spec.inputs)}")
    path = spec.inputs[0]
    if kind == "folder":
        classnames, items = folder_items(path)
        root = path
    else:
        root = spec.image_root if spec.image_root is not None else os.path.dirname(path)
        items = coco_items(path, spec.split) if kind == "coco" else csv_items(path)
        classnames = None
    return Dataset(_samples(items, path, root, tally, rank, world_size), kind, classnames)


def detect(inputs: tuple[str, ...]) -> str:
    """The form of a dataset from its name (and, for `.json`, its top-level shape)."""
    if len(inputs) == 1:
        path = inputs[0]
        if os.path.isdir(path):
            return "folder"
        if path.endswith(".csv") and os.path.isfile(path):
            return "csv"
        if path.endswith(".json") and os.path.isfile(path) and _is_coco(path):
            return "coco"
    return "stream"


def _is_coco(path: str) -> bool:
    """A JSON document with `images` (COCO, Karpathy), not JSONL records."""
    with open(path, "rb") as f:
        first = f.readline()
    try:
        record = orjson.loads(first)
    except orjson.JSONDecodeError:
        return True  # a document spread over lines: not one record per line
    return isinstance(record, dict) and "images" in record and "key" not in record


# -- labels ------------------------------------------------------------------


def captions_of(record: dict, fields: tuple[str, ...] = CAPTION_FIELDS) -> list[str]:
    """The captions of a record: the first of `fields` present; strings split into lines."""
    for name in fields:
        value = record.get(name)
        if isinstance(value, str):
            return [line.strip() for line in value.splitlines() if line.strip()]
        if isinstance(value, list):
            return [c.strip() for c in value if isinstance(c, str) and c.strip()]
    return []


def class_of(record: dict) -> int | None:
    value = record.get("cls")
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return None


# -- adapters ----------------------------------------------------------------

# An item is (position for messages, record, None) or (position, None, (reason, detail)).


def _samples(
    items: list, name: str, root: str, tally: Tally, rank: int, world_size: int
) -> Iterator[Sample]:
    source = Source(name, "jsonl", root)
    for idx, (pos, record, problem) in enumerate(items):
        if idx % world_size != rank:
            continue
        tally.n_in += 1
        if record is None:
            tally.reject(problem[0], problem[1], idx=idx, origin=f"{name}:{pos}")
            continue
        yield Sample(record, None, idx, source, pos)


def folder_items(root: str) -> tuple[list[str], list]:
    """(class names, items) of an image-folder tree: a class per sub-folder, sorted."""
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise VecapError(f"'{root}' has no class folders")
    items = []
    for index, name in enumerate(classes):
        for directory, subdirs, files in os.walk(os.path.join(root, name), followlinks=True):
            subdirs.sort()
            for file in sorted(files):
                if file.lower().endswith(FOLDER_EXTS):
                    rel = os.path.relpath(os.path.join(directory, file), root)
                    items.append((rel, {"key": rel, "image": rel, "cls": index}, None))
    return classes, items


def coco_items(path: str, split: str) -> list:
    """COCO caption JSON, or Karpathy's dataset_*.json restricted to `split`."""
    try:
        with open(path, "rb") as f:
            data = orjson.loads(f.read())
    except (OSError, orjson.JSONDecodeError) as err:
        raise VecapError(f"cannot read '{path}': {err}") from None
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, list):
        raise VecapError(f"'{path}' is not COCO caption JSON: no 'images' list")
    if "annotations" in data:
        return _coco(path, images, data["annotations"])
    return _karpathy(images, split)


def _coco(path: str, images: list, annotations: list) -> list:
    captions: dict = {}
    for ann in annotations:
        if isinstance(ann, dict) and isinstance(ann.get("caption"), str):
            captions.setdefault(ann.get("image_id"), []).append(ann["caption"])
    items = []
    for n, image in enumerate(images):
        if not isinstance(image, dict) or not isinstance(image.get("file_name"), str):
            items.append((f"images[{n}]", None, ("bad-record", "image entry without 'file_name'")))
            continue
        file = image["file_name"]
        record = {"key": str(image.get("id", file)), "image": file}
        record["captions"] = captions.get(image.get("id"), [])
        items.append((file, record, None))
    if not items:
        raise VecapError(f"'{path}' lists no images")
    return items


def _karpathy(images: list, split: str) -> list:
    items = []
    for n, image in enumerate(images):
        if not isinstance(image, dict) or not isinstance(image.get("filename"), str):
            items.append((f"images[{n}]", None, ("bad-record", "image entry without 'filename'")))
            continue
        if split != "all" and image.get("split") != split:
            continue
        file = os.path.join(image.get("filepath") or "", image["filename"])
        sentences = image.get("sentences") or []
        raw = [s.get("raw") for s in sentences if isinstance(s, dict)]
        key = str(image.get("cocoid", image.get("imgid", file)))
        items.append((file, {"key": key, "image": file, "captions": raw}, None))
    return items


def csv_items(path: str) -> list:
    """`image,caption` rows (header optional, CSV quoting), grouped by image in first-seen order."""
    groups: dict[str, dict] = {}
    items = []
    try:
        with open(path, newline="", encoding="utf-8") as f:
            for row_no, row in enumerate(csv.reader(f), 1):
                if row_no == 1 and [c.strip().lower() for c in row[:2]] == ["image", "caption"]:
                    continue
                if not row or not any(row):
                    continue
                if len(row) < 2 or not row[0].strip():
                    items.append((row_no, None, ("bad-row", f"expected image,caption: {row!r}")))
                    continue
                image = row[0].strip()
                if image not in groups:
                    groups[image] = {"key": image, "image": image, "captions": []}
                    items.append((row_no, groups[image], None))
                groups[image]["captions"].append(",".join(row[1:]))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise VecapError(f"cannot read '{path}': {err}") from None
    return items
