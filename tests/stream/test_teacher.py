"""read_teacher: the stored embeddings as arrays, and a clear error for every member a
hostile record could carry (a path for a name, a giant or pickled array, a header
that lies about its shape)."""

import io

import numpy as np
import pytest

from vecap_cli.stream.sample import Sample
from vecap_cli.stream.teacher import (
    MAX_BYTES,
    TeacherError,
    augment_key,
    field_ok,
    member_ok,
    read_teacher,
    to_npy,
)


def unit(rows: int, dim: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((rows, dim))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def sample(texts=None, **meta) -> Sample:
    members = {"teacher.img.npy": to_npy(unit(2, 8))}
    names = {}
    for field, data in (texts if texts is not None else {"alt": to_npy(unit(3, 8, 1))}).items():
        names[field] = f"teacher.{field}.npy"
        members[names[field]] = data
    teacher = {"image": "teacher.img.npy", "text": names, "augmentations": 2, "dim": 8} | meta
    return Sample({"key": "k", "teacher": teacher}, {"png": b"", **members})


def npy(array) -> bytes:
    out = io.BytesIO()
    np.save(out, array)
    return out.getvalue()


def test_reads_float16_rows_of_the_declared_shape():
    image, texts = read_teacher(sample())
    assert image.dtype == np.float16 and image.shape == (2, 8)
    assert set(texts) == {"alt"} and texts["alt"].shape == (3, 8)
    np.testing.assert_allclose(image.astype(np.float32), unit(2, 8), atol=1e-3)


def bad_header(shape) -> bytes:
    """A float16 .npy whose header declares `shape` over 16 bytes of data."""
    data = npy(np.zeros((1, 8), np.float16))
    declared = data.replace(b"(1, 8)", repr(shape).encode())
    return declared[:10] + declared[10:].replace(b" " * (len(repr(shape)) - 6), b"", 1)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"image": "../../etc/passwd"}, "not a teacher member name"),
        ({"image": "teacher/img.npy"}, "not a teacher member name"),
        ({"image": "teacher.other.npy"}, "does not carry"),
        ({"augmentations": 3}, "holds 2 rows, not 3"),
        ({"dim": 9}, "expected (rows >= 1, 9)"),
        ({"dim": True}, "positive integers"),
        ({"text": ["teacher.alt.npy"]}, "is not an object"),
    ],
)
def test_a_bad_record_is_one_clear_error(change, message):
    with pytest.raises(TeacherError) as err:
        read_teacher(sample(**change))
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (npy(unit(2, 8).astype(np.float32)), "expected float16"),
        (npy(np.array([{"a": 1}, None], dtype=object)), "expected float16"),  # never unpickled
        (npy(unit(2, 8)[:, :, None].astype(np.float16)), "expected float16"),
        (npy(np.full((2, 8), 0.1, np.float16)), "not unit vectors"),
        (npy(np.full((2, 8), np.nan, np.float16)), "not unit vectors"),
        (b"\x93NUMPY\x01\x00garbage", "not a .npy array"),
        (b"PK\x03\x04 a zip", "not a .npy array"),
        (bad_header((10**12, 8)), "bytes of data for"),  # never allocated
        (b"\0" * (MAX_BYTES + 1), "over"),
    ],
)
def test_a_bad_member_is_one_clear_error(data, message):
    with pytest.raises(TeacherError) as err:
        read_teacher(sample(texts={"alt": data}))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_no_teacher_is_an_error():
    with pytest.raises(TeacherError, match="no 'teacher' object"):
        read_teacher(Sample({"key": "k"}))


def test_names_and_fields():
    assert member_ok("teacher.img.npy") and member_ok("teacher.vec_2.npy")
    for name in ("../x.npy", "a/b.npy", "teacher..npy", "Teacher.img.npy", "x.npy\0", 3, ""):
        assert not member_ok(name)
    assert field_ok("vecap") and not field_ok("img") and not field_ok("a.b")


def test_augment_key_survives_a_rename():
    renamed = sample(key="r0")
    renamed.record["key"] = "r0_alt"
    assert augment_key(renamed) == "r0" and augment_key(sample()) == "k"


def test_a_record_naming_too_many_caption_fields_is_refused_unread():
    """One hostile record may not make the reader load a member thousands of times."""
    from vecap_cli.stream.teacher import MAX_FIELDS

    many = sample()
    many.record["teacher"]["text"] = {f"f{i}": "teacher.img.npy" for i in range(MAX_FIELDS + 1)}
    with pytest.raises(TeacherError, match=f"names {MAX_FIELDS + 1} fields, over {MAX_FIELDS}"):
        read_teacher(many)


def test_only_the_fields_asked_for_are_read():
    two = sample({"alt": to_npy(unit(3, 8, 1)), "vecap": to_npy(unit(1, 8, 2))})
    del two.members["teacher.vecap.npy"]  # would fail if read
    _, texts = read_teacher(two, fields=("alt",))
    assert set(texts) == {"alt"} and texts["alt"].shape == (3, 8)
    with pytest.raises(TeacherError, match="does not carry"):
        read_teacher(two)
