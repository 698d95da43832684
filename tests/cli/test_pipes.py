"""Real shell pipes through the installed console script, as users write them."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

VECAP = shutil.which("vecap", path=str(Path(sys.executable).parent)) or shutil.which("vecap")
pytestmark = pytest.mark.skipif(VECAP is None, reason="the vecap console script is not installed")


def sh(script: str, cwd: Path, pipefail: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(VECAP).parent}:{os.environ['PATH']}"}
    shell = ["bash", "-o", "pipefail", "-c"] if pipefail else ["bash", "-c"]
    return subprocess.run([*shell, script], cwd=cwd, env=env, capture_output=True, timeout=300)


def load(path: Path) -> list[dict]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def test_jsonl_to_tar_to_jsonl_keeps_every_field_and_image_byte(records_with_images):
    work = records_with_images.parent
    done = sh(
        "cat pool.jsonl | vecap mix -q --policy first --format tar > pool.tar"
        " && vecap mix -q pool.tar --policy first -o back/pool.jsonl --images-dir back/img",
        work,
    )
    assert done.returncode == 0, done.stderr.decode()
    before, after = load(records_with_images), load(work / "back" / "pool.jsonl")
    assert len(before) == len(after) == 1000
    for a, b in zip(before, after, strict=True):
        assert (work / a["image"]).read_bytes() == (work / "back" / b["image"]).read_bytes()
        assert Path(b["image"]).suffix == Path(a["image"]).suffix
        a, b = dict(a), dict(b)
        del a["image"], b["image"]
        assert b == {**a, "text": a["alt"]}


def test_a_pipe_of_mixes_ends_in_a_trainable_tar(records_with_images):
    work = records_with_images.parent
    done = sh(
        "cat pool.jsonl | vecap mix -q --policy all | vecap mix -q --keys text,vecap --format tar > y.tar",
        work,
    )
    assert done.returncode == 0, done.stderr.decode()
    import webdataset as wds

    samples = list(
        wds.WebDataset(str(work / "y.tar"), shardshuffle=False)
        .decode("pil")
        .to_tuple("jpg;png", "txt")
    )
    assert len(samples) > 1000  # `all` expanded the records that have a VeCap
    assert all(image.size[0] >= 4 and text for image, text in samples)


def test_head_ends_the_pipe_quietly(tmp_path):
    (tmp_path / "big.jsonl").write_text(
        "".join(f'{{"key": "{i}", "alt": "x"}}\n' for i in range(200_000))
    )
    done = sh("vecap mix big.jsonl --policy first | head -n 3", tmp_path, pipefail=False)
    assert done.returncode == 0  # head's status
    assert len(done.stdout.splitlines()) == 3
    assert done.stderr == b""  # no traceback, no "Exception ignored" from the last flush


def test_a_closed_socket_is_an_error_not_a_kill(tmp_path):
    """SIGPIPE stays ignored, as Python sets it: with it at its default, a server that
    closes its end would kill `vecap caption --backend openai` with no word."""
    import signal

    from vecap_cli.cli.app import main

    with pytest.raises(SystemExit):
        main(["--version"])
    assert signal.getsignal(signal.SIGPIPE) == signal.SIG_IGN


def test_bad_inputs_are_counted_or_named_never_a_traceback(tmp_path, records_with_images):
    work = records_with_images.parent
    good = sh("vecap mix -q pool.jsonl --policy first -o good.tar", work)
    assert good.returncode == 0
    data = (work / "good.tar").read_bytes()
    (work / "cut.tar").write_bytes(data[: len(data) // 2])
    (work / "empty.jsonl").write_bytes(b"")
    (work / "odd.jsonl").write_bytes(
        b'{"key": "u1", "alt": "ok"}\n{"key": "u2", "alt": "\xff\xfe"}\n[1, 2]\n'
        b'{"key": "u3", "alt": "x", "image": "img/missing.png"}\n'
    )
    run = sh(
        "vecap mix cut.tar odd.jsonl empty.jsonl good.tar --policy first -o all.tar"
        " --stats stats.json --rejects rejects.jsonl",
        work,
    )
    err = run.stderr.decode()
    assert run.returncode == 0, err
    assert "Traceback" not in err
    assert "warning: 'empty.jsonl' is empty" in err
    stats = orjson.loads((work / "stats.json").read_bytes())
    assert stats["balanced"]
    assert stats["rejected"] == {
        "tar-truncated": 1,
        "not-utf8": 1,
        "not-object": 1,
        "image-missing": 1,
    }
    n_cut = stats["in"] - 1000 - 4  # what the cut tar still held, its damaged sample included
    assert stats["out"] == (n_cut - 1) + 1 + 1000
    reasons = sorted(
        orjson.loads(line)["reason"] for line in (work / "rejects.jsonl").read_bytes().splitlines()
    )
    assert reasons == ["image-missing", "not-object", "not-utf8", "tar-truncated"]
