"""caption and rewrite --n, --temperature, --seed and --style through the CLI, against the
fake OpenAI server (a server that honours a per-request seed), and list-valued records
through the commands downstream."""

import json
import random
import tarfile

import orjson
import pytest

from tests.cli.test_contract import no_traceback
from tests.conftest import run_vecap, tiny_image, write_jsonl
from tests.openai_server import ChatServer, digest_answer, sampled_answer
from vecap_cli.steps.draws import Draws
from vecap_cli.steps.generation import CAPTION_STYLES
from vecap_cli.steps.rewrite.prompt import STYLES


@pytest.fixture
def pool(tmp_path):
    rng = random.Random(5)
    (tmp_path / "img").mkdir()
    records = []
    for i in range(6):
        (tmp_path / "img" / f"{i}.png").write_bytes(tiny_image(rng, "png"))
        records.append({"key": f"r{i}", "alt": f"Eiffel Tower {i}", "image": f"img/{i}.png"})
    return write_jsonl(tmp_path / "pool.jsonl", records)


def caption(pool, server, *flags):
    base = ("caption", pool, "--backend", "openai", "--model", "m", "--api-base", server.url)
    return run_vecap(*base, *map(str, flags))


def test_n_draws_are_k_seeded_requests_whatever_the_workers_and_batches(pool, tmp_path):
    with ChatServer(digest_answer, answer_body=sampled_answer) as server:
        one = caption(pool, server, "--n", 3, "--temperature", 0.8, "--batch-size", 4)
        bodies = list(server.bodies)
        spread = caption(pool, server, "--n", 3, "--temperature", 0.8, "--batch-size", 1,
                         "--workers", 2)  # fmt: skip
        other_seed = caption(pool, server, "--n", 3, "--temperature", 0.8, "--seed", 1)
        server.bodies.clear()
        greedy = caption(pool, server)
    assert one.code == spread.code == other_seed.code == greedy.code == 0, one.err
    out = one.records()
    assert one.out == spread.out  # the same bytes with other batches and processes
    for record in out:
        seeds = Draws(3, 0.8).seeds(record["key"])
        assert isinstance(record["vec"], list) and len(record["vec"]) == 3
        assert [v.split("seed ")[1] for v in record["vec"]] == [f"{s} at 0.8" for s in seeds]
    assert len(bodies) == 18 and {b["temperature"] for b in bodies} == {0.8}
    assert len({b["seed"] for b in bodies}) == 18
    changed = [a["vec"] != b["vec"] for a, b in zip(out, other_seed.records(), strict=True)]
    assert all(changed)
    # --n 1 and no --temperature: the request, and the output, as they always were
    assert all(b["temperature"] == 0 and "seed" not in b for b in server.bodies)
    assert all(isinstance(r["vec"], str) for r in greedy.records())


def test_the_cache_replays_all_k_draws_and_a_resume_must_agree_on_n(pool, tmp_path):
    cache = tmp_path / "cache"
    flags = ("--n", 3, "--temperature", 1.0, "--cache", cache, "-o", tmp_path / "o" / "%03d.jsonl",
             "--shard-size", 4, "--stats", tmp_path / "s.json")  # fmt: skip
    with ChatServer(digest_answer, answer_body=sampled_answer) as server:
        first = caption(pool, server, *flags)
    with ChatServer(digest_answer, answer_body=sampled_answer) as server:
        again = caption(pool, server, *flags)
        asked = server.requests
        other = caption(pool, server, *flags[:-4], "--n", 2, "--resume")
    assert first.code == again.code == 0, first.err
    assert asked == 0  # every draw came from the cache
    assert orjson.loads((tmp_path / "s.json").read_bytes())["cache"] == {"hit": 18}
    assert other.code == 1 and "cannot resume" in other.err
    no_traceback(other)


def test_several_greedy_draws_are_a_usage_error_in_one_line(pool):
    result = run_vecap("caption", pool, "--model", "m", "--backend", "openai", "--n", "3")
    assert result.code == 2 and "--temperature above 0" in result.err
    no_traceback(result)
    many = run_vecap("caption", pool, "--model", "m", "--n", "1000000000", "--temperature", "1")
    assert many.code == 2 and "--n" in many.err
    no_traceback(many)
    rules = run_vecap("rewrite", pool, "--n", "2", "--temperature", "1")
    assert rules.code == 2 and "fixed rules" in rules.err
    no_traceback(rules)


def test_a_style_sends_its_prompt_and_its_length(pool, tmp_path):
    with ChatServer(digest_answer) as server:
        dense = caption(pool, server, "--style", "dense")
        sent = server.bodies[0]
    assert dense.code == 0, dense.err
    text = [p["text"] for p in sent["messages"][0]["content"] if p["type"] == "text"]
    assert text == [CAPTION_STYLES["dense"].prompt] and sent["max_tokens"] == 200
    bad = run_vecap("caption", pool, "--model", "m", "--style", "long")
    assert bad.code == 2 and "'long' is not one of" in bad.err


def fused(body: dict) -> str:
    """A fusion naming the VeC it was given and the draw's seed."""
    vec = json.loads(body["messages"][-1]["content"].split("VEC: ")[1])
    return f"the Eiffel Tower as {vec} with seed {body.get('seed')}"


def test_rewrite_draw_i_fuses_vec_i_and_the_style_sets_the_system_prompt(tmp_path):
    records = [
        {"key": "a", "alt": "Eiffel Tower", "vec": ["a tall iron tower", "a grey mast"]},
        {"key": "b", "alt": "Eiffel Tower", "vec": "a tower at night"},
    ]
    pool = write_jsonl(tmp_path / "v.jsonl", records)
    base = ("rewrite", pool, "--backend", "openai", "--model", "m")
    with ChatServer(digest_answer, answer_body=fused) as server:
        three = run_vecap(*base, "--api-base", server.url, "--n", "3", "--temperature", "0.7",
                          "--style", "short")  # fmt: skip
        system = server.bodies[0]["messages"][0]["content"]
    assert three.code == 0, three.err
    a, b = three.records()
    seeds = Draws(3, 0.7).seeds("a")
    assert a["vecap"] == [
        f"the Eiffel Tower as a tall iron tower with seed {seeds[0]}",
        f"the Eiffel Tower as a grey mast with seed {seeds[1]}",
        f"the Eiffel Tower as a tall iron tower with seed {seeds[2]}",
    ]
    assert len(b["vecap"]) == 3 and all("a tower at night" in v for v in b["vecap"])
    assert system == STYLES["short"].system


def test_list_valued_records_go_through_rewrite_mix_and_the_tar_writer(tmp_path):
    records = [
        {"key": "a", "alt": "Eiffel Tower", "vec": ["a tall iron tower", "a grey mast"]},
        {"key": "b", "alt": "IMG_1.jpg", "vec": ["a dog"], "vecap": ["a dog", "a brown dog"]},
    ]
    pool = write_jsonl(tmp_path / "v.jsonl", records)
    rules = run_vecap("rewrite", pool, "--format", "tar", "-o", tmp_path / "r.tar")
    assert rules.code == 0, rules.err
    with tarfile.open(tmp_path / "r.tar") as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    a, b = orjson.loads(members["a.json"]), orjson.loads(members["b.json"])
    assert a["vec"] == records[0]["vec"] and a["vecap"].startswith("a tall iron tower")
    assert b["vecap"] == ["a dog", "a brown dog"]  # a list is a VeCap already there
    assert members["a.txt"] == b"Eiffel Tower" and members["b.txt"] == b"IMG_1.jpg"
    mixed = run_vecap("mix", tmp_path / "r.tar", "--format", "jsonl")
    assert mixed.code == 0, mixed.err
    no_traceback(mixed)
    assert [r["vecap"] for r in mixed.records()] == [a["vecap"], b["vecap"]]  # carried through
