"""`vecap curate --rule metaclip2` and `--text-keys` as users run them."""

import orjson
import pytest

from tests.conftest import run_vecap, write_jsonl

RECORDS = [
    {"key": "a", "alt": "Oklahoma on map of usa — ストック写真"},
    {"key": "b", "alt": "[入荷予約商品] 送料無料 ポイント10倍"},
    {"key": "c", "alt": "a photo of a dog on the beach", "title": "dog photo"},
    {"key": "d", "alt": "Привет мир, это фотография собаки"},  # Russian: no list
    {"key": "e", "alt": ["une photo de mon chien", "a dog in the sky"]},
]


@pytest.fixture
def pool(tmp_path):
    write_jsonl(tmp_path / "pool.jsonl", RECORDS)
    meta = tmp_path / "meta"
    meta.mkdir()
    (meta / "en.json").write_bytes(orjson.dumps(["dog", "photo", "usa", "sky"]))
    (meta / "ja.json").write_bytes(orjson.dumps(["写真", "商品", "ストック"]))
    (meta / "fr.json").write_bytes(orjson.dumps(["chien", "photo"]))
    return tmp_path


def test_metaclip2_writes_languages_and_drops_languages_without_a_list(pool):
    stats = pool / "stats.json"
    result = run_vecap(
        "curate", pool / "pool.jsonl", "--metadata", pool / "meta", "--rule", "metaclip2",
        "--text-keys", "alt,title", "--keep-all", "--stats", stats,
    )  # fmt: skip
    assert result.code == 0, result.err
    out = {r["key"]: r["curate"] for r in result.records()}
    assert set(out) == {"a", "b", "c", "e"}
    (a,) = out["a"]["texts"]
    assert (a["lang"], a["entries"]) == ("ja", [0])  # 写真, not ストック (kana are padded)
    assert out["b"]["texts"][0]["entries"] == [1]
    assert out["c"]["text"] in ("a photo of a dog on the beach", "dog photo")
    assert [t["lang"] for t in out["e"]["texts"]] == ["fr", "en"]
    counts = orjson.loads(stats.read_bytes())
    assert counts["dropped"] == {"no-metadata-for-lang": 1}
    assert counts["curate"]["languages"]["en"]["t"] == 20_000
    assert "no-metadata-for-lang 1" in result.err


def test_t_per_lang_and_its_mistakes(pool):
    (pool / "t.json").write_bytes(orjson.dumps({"ja": 1}))
    common = ("curate", pool / "pool.jsonl", "--metadata", pool / "meta")
    ok = run_vecap(*common, "--rule", "metaclip2", "--t-per-lang", pool / "t.json", "--keep-all")
    assert ok.code == 0, ok.err
    assert {r["key"]: r["curate"]["p"] for r in ok.records()}["b"] == 1.0  # ja 商品: 1 <= t
    v1 = run_vecap(
        *common[:2], "--metadata", pool / "meta" / "en.json", "--t-per-lang", pool / "t.json"
    )
    assert v1.code == 2 and "--rule metaclip2" in v1.err
    (pool / "bad.json").write_bytes(b'{"ja": 0}')
    bad = run_vecap(*common, "--rule", "metaclip2", "--t-per-lang", pool / "bad.json")
    assert bad.code == 1 and "positive integers" in bad.err
    file = run_vecap(*common[:2], "--metadata", pool / "meta" / "en.json", "--rule", "metaclip2")
    assert file.code == 1 and "must be a folder" in file.err
    unknown = run_vecap(*common, "--rule", "v3")
    assert unknown.code == 2 and "'v3' is not one of" in unknown.err


def test_texts_one_and_its_mistake(pool):
    common = ("curate", pool / "pool.jsonl", "--metadata", pool / "meta", "--rule", "metaclip2")
    one = run_vecap(*common, "--text-keys", "alt,title", "--texts", "one", "--keep-all")
    assert one.code == 0, one.err
    c = {r["key"]: r["curate"] for r in one.records()}["c"]
    assert c["text"] in ("a photo of a dog on the beach", "dog photo") and 0 < c["p"] <= 1
    bad = run_vecap(*common, "--texts", "all")
    assert bad.code == 2 and "'all' is not one of" in bad.err


def test_report_reads_a_language_folder(pool):
    common = ("--metadata", pool / "meta", "--rule", "metaclip2")
    counted = run_vecap("curate", "count", pool / "pool.jsonl", *common, "-o", pool / "c.json")
    assert counted.code == 0, counted.err
    result = run_vecap("curate", "report", pool / "c.json", "--metadata", pool / "meta")
    assert result.code == 0, result.err
    text = result.out.decode()
    assert "3 matched, of the 3 with a list" in text and "\nja " in text
    assert (pool / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    other = run_vecap("curate", "report", pool / "c.json", "--metadata", pool / "meta" / "en.json")
    assert other.code == 1 and "another metadata list" in other.err


def test_metaclip2_matches_languages_without_a_list_against_other(pool):
    (pool / "meta" / "other.json").write_bytes(orjson.dumps(["собаки", "мир"]))
    stats = pool / "stats.json"
    result = run_vecap(
        "curate", pool / "pool.jsonl", "--metadata", pool / "meta", "--rule", "metaclip2",
        "--keep-all", "--stats", stats,
    )  # fmt: skip
    assert result.code == 0, result.err
    out = {r["key"]: r["curate"] for r in result.records()}
    assert (out["d"]["lang"], out["d"]["list"], out["d"]["entries"]) == ("ru", "other", [0, 1])
    assert (out["a"]["lang"], out["a"]["list"]) == ("ja", "ja")
    counts = orjson.loads(stats.read_bytes())
    assert "no-metadata-for-lang" not in counts["dropped"]
    assert counts["curate"]["languages"]["other"]["matches"] == 2


def _without_conf(curate: dict) -> dict:
    texts = [{k: v for k, v in t.items() if k != "lang_conf"} for t in curate.get("texts", [])]
    rest = {k: v for k, v in curate.items() if k not in ("lang_conf", "texts")}
    return {**rest, "texts": texts} if texts else rest


def test_lang_key_uses_the_records_language_as_identification_would(pool):
    common = ("curate", "--metadata", pool / "meta", "--rule", "metaclip2", "--keep-all")
    identified = run_vecap(*common, pool / "pool.jsonl")
    assert identified.code == 0, identified.err
    (pool / "id.jsonl").write_bytes(identified.out)
    by_key = {r["key"]: r["curate"] for r in identified.records()}
    # every one-text record carries what identification said; the list record does not
    given = [
        {**r, "lang": by_key[r["key"]]["lang"]}
        if r["key"] in by_key and "lang" in by_key[r["key"]]
        else r
        for r in RECORDS
    ]
    write_jsonl(pool / "given.jsonl", given)
    result = run_vecap(*common, pool / "given.jsonl", "--lang-key", "lang")
    assert result.code == 0, result.err
    out = {r["key"]: r["curate"] for r in result.records()}
    assert out["a"]["lang_conf"] is None and by_key["a"]["lang_conf"] > 0  # given, not identified
    assert out["e"]["texts"][0]["lang_conf"] is not None  # no field: identified
    assert {k: _without_conf(c) for k, c in out.items()} == {
        k: _without_conf(c) for k, c in by_key.items()
    }
    # a previous run's output names its languages in curate.lang
    again = run_vecap(*common, pool / "id.jsonl", "--lang-key", "curate.lang")
    assert again.code == 0, again.err
    langs = {k: c.get("lang") for k, c in by_key.items()}
    assert {r["key"]: r["curate"].get("lang") for r in again.records()} == langs


def test_a_given_language_decides_the_list_and_bad_ones_are_rejected(pool):
    records = [
        {"key": "fr", "alt": "ストック photo", "lang": "fr"},  # matched against fr's list
        {"key": "none", "alt": "a dog", "lang": None},  # identified
        {"key": "nolist", "alt": "a dog", "lang": "ru"},  # no list for ru, no other
        {"key": "num", "alt": "a dog", "lang": 5},
        {"key": "path", "alt": "a dog", "lang": "../../etc/passwd"},
        {"key": "empty", "alt": "a dog", "lang": ""},
        {"key": "dict", "alt": "a dog", "lang": {"en": 1}},
        {"key": "notext", "lang": "en"},
    ]
    write_jsonl(pool / "p.jsonl", records)
    result = run_vecap(
        "curate", pool / "p.jsonl", "--metadata", pool / "meta", "--rule", "metaclip2",
        "--lang-key", "lang", "--keep-all", "--rejects", pool / "rej.jsonl",
        "--stats", pool / "stats.json",
    )  # fmt: skip
    assert result.code == 0, result.err
    out = {r["key"]: r["curate"] for r in result.records()}
    assert set(out) == {"fr", "none"}
    assert (out["fr"]["lang"], out["fr"]["list"], out["fr"]["entries"]) == ("fr", "fr", [1])
    assert out["none"]["lang"] == "en" and out["none"]["lang_conf"] > 0
    stats = orjson.loads((pool / "stats.json").read_bytes())
    assert stats["rejected"] == {"bad-lang": 4, "no-text": 1}
    assert stats["dropped"] == {"no-metadata-for-lang": 1}
    assert stats["in"] == stats["out"] + 1 + 5
    rejects = [orjson.loads(line) for line in (pool / "rej.jsonl").read_bytes().splitlines()]
    assert [r["reason"] for r in rejects] == ["bad-lang"] * 4 + ["no-text"]
    assert "'lang' holds no language code" in rejects[0]["detail"]


def test_lang_key_goes_with_metaclip2(pool):
    result = run_vecap(
        "curate", pool / "pool.jsonl", "--metadata", pool / "meta" / "en.json", "--lang-key", "lang"
    )
    assert result.code == 2 and "--lang-key goes with --rule metaclip2" in result.err
    assert "Traceback" not in result.err
