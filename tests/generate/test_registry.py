"""A backend is one class and one `register` call: a throwaway captioner and chat
model, registered after the CLI was imported, run through it like the built-in ones."""

import random

import orjson
import pytest
from PIL import Image

from tests.conftest import tiny_image, write_jsonl
from vecap_cli.cli.app import main
from vecap_cli.generate.registry import CAPTION, REWRITE, Backend, Request, register, unregister

SHOUT = "A DOG ON THE GRASS IN A PARK"


class Measure:
    """Captions an image with its width: `prepare` decoded it in the workers."""

    def __init__(self, request: Request):
        self.unit = request.model

    def generate(self, images: list) -> list[str]:
        return [f"a picture {image.width} {self.unit} wide" for image in images]


class Shout:
    """Answers every conversation alike."""

    def __init__(self, request: Request):
        pass

    def generate(self, conversations: list) -> list[str]:
        return [SHOUT for _ in conversations]


@pytest.fixture
def throwaway():
    backends = [
        register(Backend("measure", CAPTION, Measure, help="widths, not words", batch_size=3)),
        register(Backend("shout", REWRITE, Shout, help="one loud answer", model_help="any")),
    ]
    yield
    for backend in backends:
        unregister(backend)


@pytest.fixture
def pool(tmp_path):
    rng = random.Random(0)
    records = []
    for i in range(7):
        (tmp_path / f"{i}.png").write_bytes(tiny_image(rng))
        records.append({"key": f"k{i}", "alt": f"Paris photo {i}", "image": f"{i}.png"})
    return write_jsonl(tmp_path / "pool.jsonl", records)


@pytest.fixture(autouse=True)
def _wide(monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")  # help and errors on one line each, as --help wraps them


def vecap(*args) -> int:
    with pytest.raises(SystemExit) as done:
        main([str(arg) for arg in args])
    return done.value.code


def read(path) -> list[dict]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def test_a_registered_backend_captions_and_rewrites_through_the_cli(throwaway, pool, tmp_path):
    vec, vecap_ = tmp_path / "vec.jsonl", tmp_path / "vecap.jsonl"
    assert vecap("caption", pool, "--backend", "measure", "--model", "px", "-q", "-o", vec) == 0
    assert vecap("rewrite", vec, "--backend", "shout", "--model", "m", "-q", "-o", vecap_) == 0
    records = read(vecap_)
    assert [r["key"] for r in records] == [f"k{i}" for i in range(7)]
    for record in records:
        with Image.open(tmp_path / record["image"]) as image:
            assert record["vec"] == f"a picture {image.width} px wide"
        assert record["vecap"] == SHOUT


def test_its_name_and_help_are_listed(throwaway, capsys):
    assert vecap("caption", "--help") == 0
    text = capsys.readouterr().out
    assert "<hf|openclip|openai|measure>" in text
    assert "measure: widths, not words." in text
    assert "3 for measure" in text  # --batch-size's default
    assert vecap("rewrite", "--help") == 0
    text = capsys.readouterr().out
    assert "<rules|hf|openai|shout>" in text and "shout: any." in text


def test_an_unregistered_name_is_a_usage_error(pool, capsys):
    assert vecap("caption", pool, "--backend", "measure", "--model", "px") == 2
    err = capsys.readouterr().err
    assert (
        "Invalid value for '--backend': 'measure' is not one of 'hf', 'openclip', 'openai'" in err
    )
    assert "Value error" not in err  # a validator's prefix, not ours
