"""keep_models(): a process that runs command after command (a Ray actor's tasks)
builds a model once for all the runs that ask for the same one."""

import pytest

from tests.conftest import write_jsonl
from tests.generate.test_cache import Captioner, Chat, backends, pool, vecap  # noqa: F401
from vecap_cli.generate import load
from vecap_cli.generate.registry import REWRITE, Backend, register, unregister


@pytest.fixture
def keeping(monkeypatch):
    monkeypatch.setattr(load, "_keeping", False)
    monkeypatch.setattr(load, "_kept", None)  # and what it kept goes with the test
    return monkeypatch


def caption(source, tmp_path, name, *flags) -> int:
    out = tmp_path / f"{name}.jsonl"
    return vecap("caption", source, "--backend", "counted", "-q", "-o", out, *flags)


@pytest.mark.usefixtures("backends")
def test_a_kept_model_is_built_once_for_the_runs_that_ask_for_it(pool, tmp_path, keeping):  # noqa: F811
    assert caption(pool, tmp_path, "a", "--model", "m") == 0
    assert caption(pool, tmp_path, "b", "--model", "m") == 0
    assert Captioner.builds == 2  # a process of one command keeps nothing

    load.keep_models()
    for name in ("c", "d", "e"):
        assert caption(pool, tmp_path, name, "--model", "m") == 0
    assert Captioner.builds == 3
    assert caption(pool, tmp_path, "f", "--model", "m", "--prompt", "Other words.") == 0
    assert caption(pool, tmp_path, "g", "--model", "other") == 0
    assert caption(pool, tmp_path, "h", "--model", "m") == 0  # one slot: the last model only
    assert Captioner.builds == 6
    assert (tmp_path / "e.jsonl").read_bytes() == (tmp_path / "a.jsonl").read_bytes()


def test_a_server_client_is_built_for_each_run(keeping, tmp_path):
    server = register(Backend("served", REWRITE, Chat, help="a server", reuse=False))
    try:
        Chat.builds = 0
        load.keep_models()
        vec = write_jsonl(tmp_path / "vec.jsonl", [{"key": "k", "alt": "a", "vec": "b"}])
        for name in ("a", "b"):
            out = tmp_path / f"{name}.jsonl"
            assert (
                vecap("rewrite", vec, "--backend", "served", "--model", "m", "-q", "-o", out) == 0
            )
        assert Chat.builds == 2
    finally:
        unregister(server)


def test_a_backend_that_takes_no_seeds_cannot_sample_and_says_so_in_one_line():
    from vecap_cli.errors import VecapError
    from vecap_cli.generate.registry import ModelOptions, Request

    greedy = register(Backend("greedy-only", REWRITE, Chat, help="no seeds", reuse=False))
    try:
        request = Request("m", 4, ModelOptions(), temperature=1.0)
        model = load.load(REWRITE, "greedy-only", request)
        assert len(model.generate([[{"role": "user", "content": "x"}]])) == 1  # greedy: fine
        with pytest.raises(VecapError, match="--backend greedy-only does not sample"):
            model.generate([[{"role": "user", "content": "x"}]], seeds=[1])
    finally:
        unregister(greedy)
