"""--rule metaclip2 and several texts through the passes: the one-pass, count +
merge + balance over shards, reading twice and --workers all keep the same records."""

import random

import orjson
import pytest

from tests.steps.curate.test_passes import _written, counts_of, records, shards
from vecap_cli.steps.curate import passes
from vecap_cli.steps.curate.counts import read_counts
from vecap_cli.steps.curate.stages import CurateConfig
from vecap_cli.stream import batches
from vecap_cli.stream.runner import StreamOptions

WORDS = {
    "en": ["dog", "cat", "red", "cube", "photo", "of", "a", "the", "in", "Paris", "sky", "house"],
    "fr": ["chien", "chat", "photo", "rouge", "ciel", "de", "la", "le", "maison", "une"],
    "ja": ["写真", "犬", "猫", "東京", "の", "赤い", "空", "です", "ストック", "商品"],
    "th": ["แมว", "สุนัข", "ภาพถ่าย", "บ้าน", "ท้องฟ้า"],
    "ru": ["собака", "кошка", "фото", "дом", "небо", "красный"],  # no list: no-metadata-for-lang
}
METADATA = {
    "en": ["dog", "cat", "red cube", "photo", "Paris", "sky", "house", "a"],
    "fr": ["chien", "chat", "photo", "maison", "ciel rouge"],
    "ja": ["写真", "犬", "猫", "東京", "ストック"],
    "th": ["แมว", "ภาพถ่าย"],
}
SEP = {"ja": "", "th": ""}  # written without spaces


def text(rng, lang):
    return SEP.get(lang, " ").join(rng.choices(WORDS[lang], k=rng.randint(3, 8)))


def pool_lines(n=500):
    rng = random.Random(0)
    langs = ["en", "en", "en", "fr", "ja", "th", "ru"]
    lines = []
    for i in range(n):
        record = {"key": f"k{i:04d}", "alt": text(rng, rng.choice(langs))}
        if i % 3 == 0:
            record["title"] = text(rng, rng.choice(langs))
        if i % 7 == 0:
            record["alt"] = [text(rng, rng.choice(langs)) for _ in range(rng.randint(0, 3))]
        lines.append(orjson.dumps(record))
    return b"\n".join(lines) + b"\n"


@pytest.fixture
def pool(tmp_path):
    (tmp_path / "pool.jsonl").write_bytes(pool_lines())
    (tmp_path / "meta").mkdir()
    for lang, entries in METADATA.items():
        (tmp_path / "meta" / f"{lang}.json").write_bytes(orjson.dumps(entries))
    (tmp_path / "en.json").write_bytes(orjson.dumps(METADATA["en"] + METADATA["fr"]))
    return tmp_path


def opts(pool, *inputs, **kw):
    kw.setdefault("output", str(pool / "out.jsonl"))
    return StreamOptions(inputs=inputs or (str(pool / "pool.jsonl"),), **kw)


WORLD = CurateConfig(field="alt,title", rule="metaclip2", t=20, seed=4)
SEVERAL = CurateConfig(field="alt,title", t=20, seed=4)


def meta_of(pool, config):
    return str(pool / "meta") if config.rule == "metaclip2" else str(pool / "en.json")


def by_key(rows):
    return sorted(rows, key=lambda r: r["key"])


@pytest.mark.parametrize("config", [WORLD, SEVERAL], ids=["metaclip2", "several-v1"])
def test_shards_counted_merged_and_balanced_keep_what_the_one_pass_keeps(pool, config):
    one = sharded_equals_one_pass(pool, config)
    if config.rule == "metaclip2":
        assert one.dropped["no-metadata-for-lang"] > 0
        languages = one.extra["curate"]["languages"]
        assert set(languages) == {"en", "fr", "ja", "th"} and languages["en"]["t"] == 20
        summary = one.extra["curate"]  # the languages, each at its own t, added up
        for key in ("matches", "entries_matched", "matches_capped_at_t"):
            assert summary[key] == sum(lang[key] for lang in languages.values()) > 0
        assert summary["head"]["entries"] == sum(x["head"]["entries"] for x in languages.values())
        assert summary["tail"]["matches"] + summary["head"]["matches"] == summary["matches"]
        langs = {t["lang"] for r in records(pool / "out.jsonl") for t in r["curate"]["texts"]}
        assert {"en", "fr", "ja", "th"} <= langs


def sharded_equals_one_pass(pool, config):
    """Counts of 3 ranks merged, then balanced by rank, keep what one pass keeps."""
    meta = meta_of(pool, config)
    one = passes.curate(opts(pool), config, meta, save_counts=str(pool / "saved.json"))
    ranks = 3
    for rank in range(ranks):
        passes.count(
            opts(pool, output=str(pool / "c.json"), rank=rank, world_size=ranks), config, meta
        )
    parts = [str(pool / f"c.rank{r}.json") for r in range(ranks)]
    passes.merge(parts, str(pool / "merged.json"), lambda line: None)
    assert read_counts(str(pool / "merged.json")) == read_counts(str(pool / "saved.json"))
    kept = []
    for rank in range(ranks):
        out = pool / f"b{rank}.jsonl"
        ranked = opts(pool, output=str(out), rank=rank, world_size=ranks)
        passes.balance(ranked, config, meta, str(pool / "merged.json"))
        kept += records(out)
    alone = records(pool / "out.jsonl")
    assert by_key(kept) == by_key(alone)
    assert 0 < len(alone) < one.n_in
    assert one.dropped["balance"] > 0
    return one


@pytest.mark.parametrize("config", [WORLD, SEVERAL], ids=["metaclip2", "several-v1"])
def test_reading_twice_matches_again_and_writes_the_same(pool, config):
    meta = meta_of(pool, config)
    once = passes.curate(opts(pool, output=str(pool / "o/%03d.jsonl"), shard_size=60), config, meta)
    twice_opts = opts(pool, output=str(pool / "t/%03d.jsonl"), resume=True, shard_size=60)
    assert not passes.reads_once(twice_opts)
    twice = passes.curate(twice_opts, config, meta)
    assert shards(pool / "o") == shards(pool / "t")
    assert counts_of(once) == counts_of(twice) and once.extra == twice.extra


def test_a_list_field_under_v1_reads_twice_as_it_reads_once(pool, monkeypatch):
    """A list-valued field in a one-field run: the counting pass cannot be replayed,
    so the record pass matches again."""
    meta = str(pool / "en.json")
    config = CurateConfig(t=20, seed=4)
    passes.curate(opts(pool), config, meta)
    monkeypatch.setattr(passes, "_free_memory", lambda: 1000)  # too little to hold: read twice
    passes.curate(opts(pool, output=str(pool / "t.jsonl")), config, meta)
    assert records(pool / "t.jsonl") == records(pool / "out.jsonl")
    assert any("texts" in r["curate"] for r in records(pool / "out.jsonl"))


@pytest.mark.parametrize("name", ["one-pass", "count", "keep-all"])
def test_workers_curate_what_one_process_curates(pool, monkeypatch, name):
    monkeypatch.setattr(batches, "BATCH_BYTES", 3000)  # many batches
    meta = str(pool / "meta")
    runs = []
    for workers in (1, 2):
        folder = pool / f"w{workers}"
        where = {
            "output": str(folder / ("c.json" if name == "count" else "out.jsonl")),
            "rejects": str(folder / "rejects.jsonl"),
            "stats": str(folder / "stats.json"),
        }
        o = opts(pool, workers=workers, **where)
        if name == "count":
            passes.count(o, WORLD, meta)
        else:
            config = CurateConfig(**{**WORLD.__dict__, "keep_all": name == "keep-all"})
            passes.curate(o, config, meta)
        runs.append(_written(folder))
    assert runs[1] == runs[0]


def test_keep_matched_writes_every_matched_record_with_its_p_and_no_draw(pool):
    config = CurateConfig(**{**WORLD.__dict__, "keep_matched": True})
    tally = passes.curate(opts(pool), config, str(pool / "meta"))
    out = records(pool / "out.jsonl")
    assert len(out) == tally.n_out and "balance" not in tally.dropped
    for record in out:
        curate = record["curate"]
        assert "keep" not in curate and 0 <= curate["p"] <= 1
        assert curate["chosen"] is not None and curate["text"]
    assert tally.extra["expected_kept"] == pytest.approx(sum(r["curate"]["p"] for r in out))


@pytest.mark.parametrize("texts", ["any", "one"])
def test_balancing_by_metaclip2s_npz_keeps_what_the_one_pass_keeps(pool, texts):
    """vecap's counts written as MetaCLIP 2's count_per_shard writes them (an .npz of
    uint64 counts per language, unmatched languages absent) balance the same."""
    import numpy as np

    from vecap_cli.steps.curate.worldwide import read_languages

    config = CurateConfig(**{**WORLD.__dict__, "texts": texts})
    meta = str(pool / "meta")
    passes.curate(opts(pool), config, meta, save_counts=str(pool / "saved.json"))
    counts = read_counts(str(pool / "saved.json")).counts
    arrays = {
        lang: np.array(counts[start:end], dtype=np.uint64)
        for lang, start, end in read_languages(meta).slices()
        if any(counts[start:end])
    }
    np.savez(pool / "metaclip2.npz", **arrays)
    passes.balance(
        opts(pool, output=str(pool / "b.jsonl")), config, meta, str(pool / "metaclip2.npz")
    )
    assert records(pool / "b.jsonl") == records(pool / "out.jsonl")


def test_report_of_a_language_folder_shows_each_language_at_its_t(pool):
    from vecap_cli.steps.curate.worldwide import read_languages

    meta = str(pool / "meta")
    passes.count(opts(pool, output=str(pool / "c.json")), WORLD, meta)
    counts = read_counts(str(pool / "c.json")).counts
    lines = []
    passes.report(str(pool / "c.json"), 20, meta, 5, None, lines.append, (("fr", 3),))
    text = lines[0]
    assert "4 matched, of the 4 with a list" in text
    rows = {line.split()[0]: line.split() for line in text.splitlines()[6:11]}
    assert set(rows) == {"en", "fr", "ja", "th", "all"}
    for lang, start, end in read_languages(meta).slices():
        own = counts[start:end]
        _, n, matched, matches, t, head, _ = rows[lang]
        assert int(n) == end - start and int(matched.replace(",", "")) == sum(c > 0 for c in own)
        assert int(matches.replace(",", "")) == sum(own)
        t = int(t.replace(",", ""))
        assert t == {"en": 20, "fr": 3}.get(lang, t)
        assert int(head) == sum(c >= t for c in own if c)
    assert rows["all"][3].replace(",", "") == str(sum(counts))
    top = text.splitlines()[-5:]  # the top entries, with their language
    assert top[0].split()[3] in ("en", "fr", "ja", "th") and "'" in top[0]


OTHER = ["собака", "кошка", "фото дом", "photo", "chat"]  # other.json: the ru texts' list


@pytest.fixture
def other_pool(pool):
    (pool / "meta" / "other.json").write_bytes(orjson.dumps(OTHER))
    return pool


def test_with_other_shards_counted_merged_and_balanced_keep_what_the_one_pass_keeps(other_pool):
    one = sharded_equals_one_pass(other_pool, WORLD)
    assert "no-metadata-for-lang" not in one.dropped
    assert one.extra["curate"]["languages"]["other"]["matches"] > 0
    lists = [t["list"] for r in records(other_pool / "out.jsonl") for t in r["curate"]["texts"]]
    assert "other" in lists


def ref_texts(record):
    """The record's texts, alt (a string or a list's strings) then title."""
    texts = []
    for field in ("alt", "title"):
        value = record.get(field)
        texts += (
            [value] if isinstance(value, str) else [v for v in value or [] if isinstance(v, str)]
        )
    return texts


def test_other_against_a_reference(other_pool):
    """MetaCLIP 2's curate.py as plain loops: each text to its language's list, else
    'other'; counts per list; English's t, every other list's by p_to_t; p = 1 - prod
    over the entries of all texts."""
    from tests.steps.curate.test_worldwide import ref_match, ref_p_to_t, ref_t_to_p
    from vecap_cli.steps.curate.langid import LanguageId

    lid = LanguageId()
    lists = {**METADATA, "other": OTHER}
    routed, counts = {}, {name: [0] * len(entries) for name, entries in lists.items()}
    for line in pool_lines().splitlines():
        record = orjson.loads(line)
        rows = []
        for text in ref_texts(record):
            lang, conf = lid(text)
            listed = lang if lang in lists else "other"
            local = ref_match(text, lists[listed])
            for e in local:
                counts[listed][e] += 1
            rows.append((lang, conf, listed, local))
        if rows:
            routed[record["key"]] = rows
    p = ref_t_to_p(counts["en"], 20)
    ts = {
        name: 20 if name == "en" else ref_p_to_t(own, p) for name, own in counts.items() if any(own)
    }
    assert "other" in ts and any(
        r[2] == "other" and r[0] != "ru" for v in routed.values() for r in v
    )

    config = CurateConfig(**{**WORLD.__dict__, "keep_all": True})
    tally = passes.curate(opts(other_pool), config, str(other_pool / "meta"))
    out = {r["key"]: r["curate"] for r in records(other_pool / "out.jsonl")}
    assert set(out) == set(routed) and "no-metadata-for-lang" not in tally.dropped
    assert {lang: x["t"] for lang, x in tally.extra["curate"]["languages"].items()} == ts
    for key, rows in routed.items():
        written = [(t["lang"], t["lang_conf"], t["list"], t["entries"]) for t in out[key]["texts"]]
        assert written == rows
        miss = 1.0
        for name, e in {(listed, e) for _, _, listed, local in rows for e in local}:
            c, t = counts[name][e], ts[name]
            miss *= 1.0 - (t / c if c > t else 1.0)
        assert out[key]["p"] == pytest.approx(1.0 - miss, abs=1e-12)


def test_given_languages_shard_count_merge_and_balance_as_the_one_pass(pool):
    """--lang-key: records naming a language (some right, some not, some none) curate
    the same one-pass, sharded, and with workers."""
    rng = random.Random(1)
    lines = []
    for line in pool_lines().splitlines():
        record = orjson.loads(line)
        choice = rng.random()
        if choice < 0.4:
            record["lang"] = rng.choice(["en", "fr", "ja", "th", "ru"])
        elif choice < 0.45:
            record["lang"] = 3  # rejected under bad-lang
        lines.append(orjson.dumps(record))
    (pool / "pool.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    config = CurateConfig(**{**WORLD.__dict__, "lang_key": "lang"})
    one = sharded_equals_one_pass(pool, config)
    assert one.rejected["bad-lang"] > 0
    assert one.n_in == one.n_out + sum(one.dropped.values()) + sum(one.rejected.values())
    out = records(pool / "out.jsonl")
    given = [r for r in out if isinstance(r.get("lang"), str)]
    assert given and all(t["lang_conf"] is None for r in given for t in r["curate"]["texts"])
    assert all(t["lang"] == r["lang"] for r in given for t in r["curate"]["texts"])
    with pytest.raises(ValueError, match="--lang-key goes with --rule metaclip2"):
        CurateConfig(lang_key="lang")
