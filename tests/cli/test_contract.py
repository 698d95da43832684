"""The stream contract, written once and applied to every record command.

A command joins by adding its flags to CASES: the flags that make it run on
the small input below (records with `alt`, `vecap`, a `filter.clip_score` and a
real image). A key is the command's words (`filter dedup` runs `vecap filter
dedup`), the name it logs and sums up under; its errors name the first word
(`vecap filter: error: ...`), as main() prints them.
"""

import random

import orjson
import pytest

from tests.conftest import REPO, run_vecap, tiny_image
from tests.openai_server import SessionURL
from vecap_cli.stream.runner import iter_samples
from vecap_cli.stream.tally import Tally

DATA = REPO / "tests" / "data"
CASES = {
    "mix": ["--policy", "first"],
    "curate": ["--metadata", str(DATA / "curate-metadata.json")],
    # The stream contract does not depend on the model: an OpenAI-compatible test
    # server keeps these runs free of torch start-up (tests/cli/test_caption.py
    # runs the local-model backends end to end).
    "caption": ["--backend", "openai", "--model", "m", "--api-base", SessionURL()],
    "rewrite": [],  # rules
    # a built-in architecture with random weights (from --seed): no file to build
    "filter score": ["--model", "vecap-tiny-sigmoid"],
    # one score at -1 counted: --keep-fraction 1 keeps every scored record
    "filter select": ["--keep-fraction", "1", "--histogram", str(DATA / "filter-histogram.json")],
    "filter dedup": ["--exact", "--phash-distance", "0"],  # the pool's images all differ
}
# Commands whose runs start torch and a model: seconds each, so marked slow.
_SLOW = {"filter score"}
COMMANDS = [pytest.param(c, marks=pytest.mark.slow) if c in _SLOW else c for c in CASES]


def vecap(command: str, *args, **kw):
    """`vecap COMMAND... CASE-FLAGS ARGS...`"""
    return run_vecap(*command.split(), *CASES[command], *args, **kw)


def group(command: str) -> str:
    """The name errors go under: the command's first word (see the docstring)."""
    return command.split()[0]


@pytest.fixture
def pool(tmp_path):
    rng = random.Random(0)
    lines = []
    for i in range(6):
        (tmp_path / f"{i}.png").write_bytes(tiny_image(rng))
        record = {
            "key": f"r{i}",
            "alt": f"a photo {i}",
            "vecap": f"a red cube {i}",
            "image": f"{i}.png",
            "filter": {"clip_score": i / 10},
            "x": [i],
        }
        lines.append(orjson.dumps(record))
    lines.insert(2, b"{not json")
    lines.insert(4, b'"a string"')
    path = tmp_path / "pool.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def no_traceback(result):
    assert "Traceback" not in result.err, result.err


def error_line(command: str, result) -> str:
    """The error, the last line of stderr; lines before it can only be the
    command's log (a model loaded, the threshold select found), never a trace."""
    no_traceback(result)
    *logged, error = result.err.strip().splitlines()
    assert all(line.startswith(f"vecap {command}: ") for line in logged), result.err
    return error


@pytest.mark.parametrize("command", COMMANDS)
def test_empty_input_is_an_empty_output(command):
    result = vecap(command, "-q", stdin=b"")
    assert (result.code, result.out) == (0, b""), result.err


@pytest.mark.parametrize("command", COMMANDS)
def test_stdin_and_file_inputs_agree(command, pool):
    from_file = vecap(command, "-q", pool)
    from_stdin = vecap(command, "-q", "-", stdin=pool.read_bytes(), cwd=pool.parent)
    assert from_file.code == from_stdin.code == 0, from_file.err + from_stdin.err
    assert from_file.records() == from_stdin.records()
    assert len(from_file.records()) == 6


@pytest.mark.parametrize("command", COMMANDS)
def test_every_record_is_accounted_for(command, pool, tmp_path):
    stats, rejects = tmp_path / "stats.json", tmp_path / "rejects.jsonl"
    result = vecap(
        command,
        pool,
        "--stats",
        stats,
        "--rejects",
        rejects,
        "-o",
        tmp_path / "o.jsonl",
    )
    assert result.code == 0, result.err
    counts = orjson.loads(stats.read_bytes())
    assert counts["in"] == 8 and counts["balanced"]
    assert counts["rejected"] == {"bad-json": 1, "not-object": 1}
    reasons = [orjson.loads(line)["reason"] for line in rejects.read_bytes().splitlines()]
    assert reasons == ["bad-json", "not-object"]
    assert f"vecap {command}: in 8 = " in result.err  # the one-line summary, its own name


@pytest.mark.parametrize("command", COMMANDS)
def test_tar_output_reads_back_as_the_same_records(command, pool, tmp_path):
    as_jsonl = vecap(command, "-q", pool)
    as_tar = vecap(command, "-q", pool, "--format", "tar")
    assert as_tar.code == 0, as_tar.err
    (tmp_path / "out.tar").write_bytes(as_tar.out)
    # read back by the stream reader itself, so commands that write no `text` qualify
    back = [s for s in iter_samples([str(tmp_path / "out.tar")], Tally("read"))]
    assert [s.record for s in back] == as_jsonl.records()
    assert all(s.image_ext() == "png" and s.image_bytes() for s in back)


@pytest.mark.parametrize("command", COMMANDS)
def test_strict_fails_on_the_first_bad_record_in_one_line(command, pool):
    result = vecap(command, pool, "--strict")
    assert result.code == 1
    error = error_line(command, result)
    assert (
        error
        == f"vecap {group(command)}: error: {pool}:3: bad-json: " + error.split("bad-json: ", 1)[1]
    )


@pytest.mark.parametrize("command", COMMANDS)
def test_structural_errors_are_one_line(command, pool, tmp_path):
    missing = vecap(command, tmp_path / "nope.jsonl")
    assert (missing.code, error_line(command, missing)) == (
        1,
        f"vecap {group(command)}: error: cannot read '{tmp_path}/nope.jsonl': no such file",
    )
    blocked = tmp_path / "blocker"
    blocked.write_text("")
    unwritable = vecap(command, pool, "-o", blocked / "out.jsonl")
    assert unwritable.code == 1
    assert (
        error_line(command, unwritable)
        == f"vecap {group(command)}: error: cannot write '{blocked}/out.jsonl': Not a directory"
    )


@pytest.mark.parametrize("command", COMMANDS)
def test_bad_flags_exit_2_naming_the_flag(command):
    result = vecap(command, "--rank", "3", "--world-size", "2", stdin=b"")
    assert result.code == 2
    assert "--rank" in result.err
    no_traceback(result)
