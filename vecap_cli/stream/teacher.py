"""Teacher embeddings carried beside a record: MobileCLIP's reinforced data
(DataCompDR), as `vecap embed` writes them and `vecap train --distill` reads them.

A sample that holds them has two more kinds of tar member and one more field:

- `KEY.teacher.img.npy`: float16 (K, D); row k is the L2-normalized teacher
  embedding of augmentation k of the image, `stream.augment.augment(image,
  seed, key, k)`, so training reproduces the crop from the seed alone;
- `KEY.teacher.FIELD.npy` for each caption field embedded: float16 (C, D), one
  L2-normalized row per caption of the field (a string: C = 1; a list: its
  non-blank captions in order, as `steps.mix.captions` gives them);
- the record's `teacher`: `{"image": "teacher.img.npy", "text": {FIELD:
  "teacher.FIELD.npy", ...}, "augmentations": K, "dim": D, "seed": SEED,
  "models": ["name:pretrained", ...], "ensemble": "mean" | "concat", "key":
  KEY}`. A field with no caption is not in `text`. `key` is the key the views
  were drawn with: `vecap mix --policy all` renames the records it multiplies
  (KEY_alt, ...), and their views are still those of KEY (`augment_key`).

The member names are what the record names, and a record comes from the web: a
name is read only when it is one plain file name (`[a-z0-9_-]` parts joined by
dots, ending `.npy`: no separator, no `..`, lower case as the tar reader
folds extensions), only from the sample's own members, at most MAX_BYTES, and
only through `np.load(allow_pickle=False)`.
"""

from __future__ import annotations

import io
import re

from vecap_cli.errors import VecapError, first_line

FIELD = "teacher"
IMAGE_MEMBER = "teacher.img.npy"
ENSEMBLES = ("concat", "mean")
# One member's bytes: DataCompDR-12M's 30 augmentations of a concatenated pair of
# ViT-L/14 teachers (D = 1536) take 92 KB in float16; 16 MiB leaves room for far
# more and still bounds what a hostile record makes a reader load.
MAX_BYTES = 16 << 20
_NAME = re.compile(r"[a-z0-9_-]+(?:\.[a-z0-9_-]+)*\.npy")
_FIELD = re.compile(r"[a-z0-9_-]+")
# the .npy versions np.save writes, and their header readers
_HEADERS = {(1, 0): "read_array_header_1_0", (2, 0): "read_array_header_2_0"}
_UNIT = 2e-2  # float16 rounding leaves a unit row's norm within ~1e-3 of 1
# caption fields a record's `teacher.text` may name: embed writes one per --text-keys
# field; a record naming thousands (each read, each up to MAX_BYTES) is refused
MAX_FIELDS = 64


class TeacherError(VecapError):
    """A sample's teacher embeddings cannot be used; `str(err)` is one line."""


def field_ok(field: str) -> bool:
    """A caption field whose embeddings can be a member: `teacher.FIELD.npy`."""
    return bool(_FIELD.fullmatch(field)) and field != "img"


def text_member(field: str) -> str:
    return f"teacher.{field}.npy"


def member_ok(name: object) -> bool:
    """One plain, lower-case file name ending `.npy`, to follow `KEY.`."""
    return isinstance(name, str) and bool(_NAME.fullmatch(name))


def is_teacher_member(ext: str) -> bool:
    return ext.startswith(f"{FIELD}.")


def to_npy(rows) -> bytes:
    """The .npy bytes of (N, D) float rows, stored as float16."""
    import numpy as np

    out = io.BytesIO()
    np.save(out, np.ascontiguousarray(rows, dtype=np.float16), allow_pickle=False)
    return out.getvalue()


def read_teacher(sample, fields=None) -> tuple:
    """(image (K, D) float16 ndarray, {field: (C, D) float16 ndarray}) of a sample
    `vecap embed` wrote; `fields`: only these of its caption fields (None: all).
    TeacherError when the record names no teacher, more than MAX_FIELDS caption
    fields, or a member that is missing, badly named, over MAX_BYTES, not a float16
    .npy, of the wrong shape, or not of unit rows."""
    meta = sample.record.get(FIELD)
    if not isinstance(meta, dict):
        raise TeacherError(f"{sample.key}: no '{FIELD}' object in the record")
    k, dim = meta.get("augmentations"), meta.get("dim")
    if not (_count(k) and _count(dim)):
        raise TeacherError(f"{sample.key}: '{FIELD}' needs positive integers augmentations, dim")
    image = _member(sample, meta.get("image"), dim)
    if image.shape[0] != k:
        raise TeacherError(f"{sample.key}: {meta['image']} holds {image.shape[0]} rows, not {k}")
    texts = teacher_texts(sample)
    if fields is not None:
        texts = {field: name for field, name in texts.items() if field in fields}
    return image, {field: _member(sample, name, dim) for field, name in texts.items()}


def teacher_texts(sample) -> dict:
    """The record's `teacher.text`: {caption field: member name}, checked for shape
    (an object of at most MAX_FIELDS entries); the members themselves are not read."""
    meta = sample.record.get(FIELD)
    texts = meta.get("text", {}) if isinstance(meta, dict) else {}
    if not isinstance(texts, dict):
        raise TeacherError(f"{sample.key}: '{FIELD}.text' is not an object")
    if len(texts) > MAX_FIELDS:
        raise TeacherError(
            f"{sample.key}: '{FIELD}.text' names {len(texts):,} fields, over {MAX_FIELDS}"
        )
    return texts


def augment_key(sample) -> str:
    """The key whose augmentations the stored image rows are: the record's key when
    embedded, which a step that renames records (mix --policy all) leaves here."""
    meta = sample.record.get(FIELD)
    key = meta.get("key") if isinstance(meta, dict) else None
    return key if isinstance(key, str) else sample.key


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _member(sample, name: object, dim: int):
    import numpy as np

    key = sample.key
    if not member_ok(name):
        raise TeacherError(f"{key}: {name!r} is not a teacher member name")
    data = sample.members.get(name)
    if data is None:
        raise TeacherError(f"{key}: the record names {name}, which the sample does not carry")
    if len(data) > MAX_BYTES:
        raise TeacherError(f"{key}.{name}: {len(data):,} bytes, over {MAX_BYTES:,}")
    rows = _load(data, f"{key}.{name}", dim)
    norms = np.linalg.norm(rows.astype(np.float32), axis=1)
    if not np.all(np.abs(norms - 1) < _UNIT):  # NaN fails too
        raise TeacherError(f"{key}.{name}: rows are not unit vectors")
    return rows


def _load(data: bytes, what: str, dim: int):
    """The (rows, dim) float16 array of .npy bytes. The header is checked against the
    bytes that follow before anything is loaded: np.load allocates the shape a
    header declares, and a header can declare any shape."""
    import numpy as np
    from numpy.lib import format as npy

    stream = io.BytesIO(data)
    try:
        version = npy.read_magic(stream)
        if version not in _HEADERS:
            raise ValueError(f".npy format version {version}")
        shape, fortran, dtype = getattr(npy, _HEADERS[version])(stream)
    except (ValueError, SyntaxError, TypeError, EOFError) as err:
        raise TeacherError(f"{what}: not a .npy array ({first_line(err)})") from None
    if dtype != np.float16 or len(shape) != 2 or fortran:
        raise TeacherError(f"{what}: expected float16 (rows, {dim}), got {dtype} {shape}")
    if shape[0] < 1 or shape[1] != dim:
        raise TeacherError(f"{what}: shape {shape}, expected (rows >= 1, {dim})")
    if len(data) - stream.tell() != shape[0] * dim * 2:
        raise TeacherError(f"{what}: {len(data) - stream.tell():,} bytes of data for {shape}")
    return np.load(io.BytesIO(data), allow_pickle=False)
