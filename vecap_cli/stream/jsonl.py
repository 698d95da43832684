"""JSONL carrier: one JSON object per line; images travel as paths in `image`."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import BinaryIO

import orjson

from vecap_cli.errors import VecapError
from vecap_cli.stream.picker import Picker
from vecap_cli.stream.sample import IMAGE_EXTS, Sample, Source
from vecap_cli.stream.tally import Tally


def parse_record(line: bytes) -> tuple[dict | None, str, str]:
    """(record, '', '') or (None, reason, detail) for a line that is not a usable record."""
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError as err:
        return None, *_unparsable(line, err)
    problem = _unusable(record)
    return (None, *problem) if problem else (record, "", "")


def _unparsable(line: bytes, err: Exception) -> tuple[str, str]:
    try:
        line.decode("utf-8")
    except UnicodeDecodeError:
        return "not-utf8", "line is not UTF-8"
    return "bad-json", str(err)


def _unusable(record: object) -> tuple[str, str] | None:
    if not isinstance(record, dict):
        return "not-object", f"a JSON {type(record).__name__}, not an object"
    key = record.get("key")
    if key is None:
        return "no-key", "record has no 'key'"
    if not isinstance(key, str | int) or isinstance(key, bool) or key == "":
        return "bad-key", f"'key' must be a non-empty string or an integer, not {key!r}"
    return None


def read_jsonl(stream: BinaryIO, source: Source, tally: Tally, pick: Picker) -> Iterator[Sample]:
    """Samples from a JSONL stream, numbered (and split between ranks) by `pick`.

    This loop is every command's floor: the common record (an object with a
    string key, on a run that keeps every record) takes the short path.
    """
    loads, plain = orjson.loads, pick.plain
    for lineno, line in enumerate(stream, 1):
        if line.isspace():
            continue
        if plain:
            pick.ordinal += 1
            idx = pick.ordinal
        else:
            idx = pick()
            if idx < 0:
                continue
        tally.n_in += 1
        try:
            record = loads(line)
        except orjson.JSONDecodeError as err:
            problem: tuple[str, str] | None = _unparsable(line, err)
        else:
            if type(record) is dict:
                key = record.get("key")
                if type(key) is str and key:
                    yield Sample(record, None, idx, source, lineno)
                    continue
            problem = _unusable(record)
        if problem is None:  # an integer key
            yield Sample(record, None, idx, source, lineno)
            continue
        raw = line.decode("utf-8", "backslashreplace").rstrip("\n")
        tally.reject(*problem, idx=idx, origin=f"{source.name}:{lineno}", raw=raw)


class JsonlWriter:
    """Writes records; tar members (images and others) go to files under `images_dir`.

    Image paths are written relative to `rel_to` (the output file's directory), so
    the JSONL reads back from wherever it is, as the reader resolves them.
    """

    def __init__(self, stream: BinaryIO, images_dir: str | None = None, rel_to: str = ""):
        self._stream = stream
        self._images_dir = images_dir
        self._rel_to = rel_to

    def write(self, sample: Sample) -> bool:
        record = sample.record
        if sample.members:
            record = self._extract(sample)
        self._stream.write(orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE))
        return True

    def write_all(self, samples: Iterable[Sample], tally: Tally) -> None:
        """`write` each sample, counting it out as it goes."""
        put, dumps, option = self._stream.write, orjson.dumps, orjson.OPT_APPEND_NEWLINE
        for sample in samples:
            put(dumps(self._extract(sample) if sample.members else sample.record, option=option))
            tally.n_out += 1

    def _extract(self, sample: Sample) -> dict:
        if self._images_dir is None:
            raise VecapError(
                f"{sample.origin}: the input carries images, which JSONL output cannot hold: "
                "pass --images-dir DIR to write them there"
            )
        record = dict(sample.record)
        others = {}
        for ext, data in sample.members.items():
            path = os.path.join(self._images_dir, f"{sample.key}.{ext}")
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            with open(path, "wb") as f:
                f.write(data)
            rel = os.path.relpath(path, self._rel_to) if self._rel_to else path
            if ext in IMAGE_EXTS:
                record["image"] = rel
            else:
                others[ext] = rel
        if others:
            record["members"] = others
        return record

    def close(self) -> None:
        self._stream.flush()

    def abort(self) -> None:
        self._stream.flush()  # the lines written are whole records
