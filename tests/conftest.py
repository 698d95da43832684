"""Fixtures every test package shares: records with real images, and the CLI as a user runs it."""

import io
import os
import random
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Triton reads TRITON_INTERPRET when it is imported and when a kernel is decorated,
# and test modules anywhere may import it (torch, train): set it before all of them,
# so the kernel tests run on the CPU interpreter. On a GPU machine,
# TRITON_INTERPRET=0 make test runs the compiled kernels instead.
os.environ.setdefault("TRITON_INTERPRET", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@dataclass
class Result:
    code: int
    out: bytes
    err: str

    def records(self) -> list[dict]:
        return [orjson.loads(line) for line in self.out.splitlines() if line.strip()]


def run_vecap(
    *args: str, stdin: bytes = b"", cwd: Path | None = None, env: dict | None = None
) -> Result:
    """`vecap ARGS` in a fresh process, exactly as a shell runs it."""
    proc = subprocess.run(
        [sys.executable, "-m", "vecap_cli", *map(str, args)],
        input=stdin,
        capture_output=True,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        timeout=600,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr.decode())


@pytest.fixture
def vecap():
    return run_vecap


def tiny_image(rng: random.Random, ext: str = "png") -> bytes:
    from PIL import Image

    size = rng.randint(4, 12)
    image = Image.frombytes("RGB", (size, size), rng.randbytes(size * size * 3))
    buf = io.BytesIO()
    image.save(buf, format="PNG" if ext == "png" else "JPEG")
    return buf.getvalue()


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(r, option=orjson.OPT_APPEND_NEWLINE) for r in records))
    return path


def make_records(n: int, seed: int = 0) -> list[dict]:
    """Records with the fields the pipeline knows and some it does not."""
    rng = random.Random(seed)
    words = ["red", "cube", "dog", "Paris", "Ünïcode", "naïve", "日本", "photo", "IMG_0042.jpg"]
    records = []
    for i in range(n):
        record = {"key": f"{i:06d}", "alt": " ".join(rng.choices(words, k=rng.randint(1, 6)))}
        if rng.random() < 0.7:
            record["vecap"] = f"a {rng.choice(words)} on a table"
        if rng.random() < 0.3:
            record["extra"] = {"nested": [i, None, True], "score": i / 7}
        records.append(record)
    return records


@pytest.fixture
def records_with_images(tmp_path) -> Path:
    """1,000 records in a JSONL file whose `image` paths (relative) point at real PNG/JPEG files."""
    rng = random.Random(1)
    (tmp_path / "img").mkdir()
    records = make_records(1000)
    for record in records:
        ext = rng.choice(["png", "jpg"])
        (tmp_path / "img" / f"{record['key']}.{ext}").write_bytes(tiny_image(rng, ext))
        record["image"] = f"img/{record['key']}.{ext}"
    return write_jsonl(tmp_path / "pool.jsonl", records)
