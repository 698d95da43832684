"""The data side of `vecap train --distill`: a sample's augmented image and teacher rows.

`vecap embed` stores, beside each record, a teacher's embedding of its image
under K augmentations (`KEY.teacher.img.npy`, (K, Dt)) and of each caption of
each field (`KEY.teacher.FIELD.npy`, (C, Dt)); the record's "teacher" object
names them and gives the augmentations' seed. Per sample and epoch, training
draws k uniformly in [0, K) from (seed, key, epoch), crops the image as
augmentation k of (teacher seed, key) (`stream/augment.py`, before the
student's own transform) and takes teacher image row k, as MobileCLIP's
DataCompDR training does; the teacher text row is the drawn caption's row.

A record without teacher data is rejected under `no-teacher`; unreadable,
misshapen or non-finite teacher data, or no row for the drawn caption, under
`bad-teacher`: one line each, never a traceback.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vecap_cli.rand import uniform
from vecap_cli.steps.mix import captions
from vecap_cli.stream.augment import augment
from vecap_cli.stream.sample import Sample
from vecap_cli.stream.teacher import TeacherError, augment_key, read_teacher, teacher_texts

NO_TEACHER = "no-teacher"
BAD_TEACHER = "bad-teacher"

# What reading hostile .npy members may raise: the reader's own refusals, and numpy's
# parse errors or a missing member should one get past it.
_READ_ERRORS = (TeacherError, ValueError, KeyError, TypeError, OSError, EOFError)


class TeacherRejected(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


def _bad(detail: str) -> TeacherRejected:
    return TeacherRejected(BAD_TEACHER, detail)


def _read(sample: Sample, fields) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    try:
        return read_teacher(sample, fields)
    except _READ_ERRORS as err:
        raise _bad(f"teacher embeddings do not read: {type(err).__name__}: {err}") from None


def _unit_rows(rows: np.ndarray, what: str) -> np.ndarray:
    """fp32 rows scaled to unit length: the teacher scale assumes cosine similarities
    (an ensemble's mean embedding is shorter than one)."""
    rows = np.asarray(rows, dtype=np.float32)
    norms = np.linalg.norm(rows, axis=-1, keepdims=True)
    if not np.isfinite(rows).all() or not (norms > 0).all():
        raise _bad(f"teacher {what} embedding is zero or not finite")
    return rows / norms


def _caption_field(sample: Sample, keys: tuple[str, ...], caption: str) -> tuple[str, int]:
    """(field, row) of `caption` among the fields the teacher embedded: the first of
    `keys` that holds it, else any embedded field that does (mix's `text` is a copy
    of one of them, and embed does not embed `text`); its row is its index among
    the field's captions (`captions`: the non-blank strings, as embed embedded them)."""
    try:
        embedded = teacher_texts(sample)
    except TeacherError as err:
        raise _bad(str(err)) from None
    record = sample.record
    for field in (*[k for k in keys if k in embedded], *embedded):
        stored = captions(record.get(field))
        if caption in stored:
            return field, stored.index(caption)
    raise _bad("no teacher embedding for the drawn caption")


def _caption_row(record: dict, texts: dict, field: str, row: int) -> np.ndarray:
    rows, n = np.asarray(texts[field]), len(captions(record.get(field)))
    if rows.ndim != 2 or rows.shape[0] != n:
        raise _bad(
            f"teacher {field} embeddings have shape {rows.shape}, not one row per caption ({n})"
        )
    return rows[row]


@dataclass(frozen=True)
class TeacherDraw:
    """Per sample and epoch: (augmented image, teacher image row, teacher text row)."""

    seed: int
    keys: tuple[str, ...]  # the caption fields training draws from
    dim: int = 0  # the run's teacher width (the first embedded record's); 0: any

    def __call__(self, sample: Sample, image, caption: str, epoch: int):
        meta = sample.record.get("teacher")
        if not isinstance(meta, dict):
            raise TeacherRejected(NO_TEACHER, "record has no teacher embeddings (vecap embed)")
        aug_seed = meta.get("seed")
        if isinstance(aug_seed, bool) or not isinstance(aug_seed, int):
            raise _bad(f"teacher.seed is {aug_seed!r}, not an integer")
        field, row = _caption_field(sample, self.keys, caption)
        images, texts = _read(sample, (field,))  # the one caption field this sample needs
        images = np.asarray(images)
        if images.ndim != 2 or images.shape[0] < 1:
            raise _bad(f"teacher image embeddings have shape {images.shape}, not (K, D)")
        if self.dim and images.shape[1] != self.dim:
            raise _bad(f"teacher width {images.shape[1]}, not this run's {self.dim}")
        text_row = _caption_row(sample.record, texts, field, row)
        if text_row.shape != images.shape[1:]:
            raise _bad(f"teacher text width {text_row.shape} is not the image's {images.shape[1:]}")
        k = int(uniform(self.seed, "distill", sample.key, epoch) * images.shape[0])
        image = augment(image, aug_seed, augment_key(sample), k)  # the key embed saw
        return image, _unit_rows(images[k], "image"), _unit_rows(text_row, "text")


def teacher_dim(samples, limit: int = 1000) -> int:
    """The teacher width of a run: `teacher.dim` of the first record that has one among
    the first `limit` of `samples` (every rank reads the same first input, so all
    agree); a record of another width is then rejected (`bad-teacher`), never a
    batch of mixed widths, which the loss, or a gather across ranks, could not take."""
    from vecap_cli.errors import VecapError

    for i, sample in enumerate(samples):
        meta = sample.record.get("teacher")
        dim = meta.get("dim") if isinstance(meta, dict) else None
        if isinstance(dim, int) and not isinstance(dim, bool) and dim > 0:
            return dim
        if i + 1 >= limit:
            break
    raise VecapError(
        f"--distill: none of the first {limit:,} records has teacher embeddings "
        "(write them with `vecap embed`)"
    )
