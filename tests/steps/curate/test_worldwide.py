"""--rule metaclip2: MetaCLIP 2's matching rule per script, languages, per-language t.

The references here are written from MetaCLIP 2's `metaclip/curation/substr_matching.py`
and `curate.py` as plain loops, independent of the code under test.
"""

import functools
import os
import random
import string

import orjson
import pytest

from tests.conftest import SHARED_DATA
from vecap_cli.errors import VecapError
from vecap_cli.steps.curate.langid import LanguageId
from vecap_cli.steps.curate.matching import Matcher, pad_metaclip2, unspaced
from vecap_cli.steps.curate.worldwide import (
    WorldMatcher,
    language_ts,
    p_to_t,
    probabilities,
    read_languages,
    t_to_p,
)

# MetaCLIP 2's is_cjk_or_similar: these code point ranges, or punctuation
REF_RANGES = [
    (0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F), (0x2B820, 0x2CEAF), (0x2CEB0, 0x2EBEF), (0xF900, 0xFAFF),
    (0x2E80, 0x2EFF), (0x2F00, 0x2FDF), (0x2FF0, 0x2FFF),
    (0x0E00, 0x0E7F),  # Thai
    (0x0E80, 0x0EFF),  # Lao
    (0x1000, 0x109F),  # Burmese
    (0x1780, 0x17FF),  # Khmer
    (0x0F00, 0x0FFF),  # Tibetan
]  # fmt: skip
REF_PUNCT = set(string.punctuation) | set("，。、；：？！“”‘’（）【】《》〈〉「」『』～—")


def ref_unspaced(char):
    return char in REF_PUNCT or any(lo <= ord(char) <= hi for lo, hi in REF_RANGES)


def ref_spacing(text):
    spaced = f" {text} "
    for punct in [",", ".", ";", ":", "?", "!", "`"]:
        spaced = spaced.replace(punct, f" {punct} ")
    for char in ["\t", "\n", "\r"]:
        spaced = spaced.replace(char, " ")
    return spaced


@functools.cache
def ref_pad(entry):
    if not ref_unspaced(entry[0]):
        entry = " " + entry
    if not ref_unspaced(entry[-1]):
        entry = entry + " "
    return entry


def ref_match(text, entries):
    spaced = ref_spacing(text)
    return [i for i, e in enumerate(entries) if e and ref_pad(e) in spaced]


CASES = [
    # (text, entry, matches): the two, then CJK, Thai, Arabic, punctuation
    ("Oklahoma on map of usa — ストック写真", "写真", True),
    ("[入荷予約商品]", "商品", True),
    ("Oklahoma on map of usa — ストック写真", "ストック", False),  # kana: padded, as in MetaCLIP 2
    ("Oklahoma on map of usa — ストック写真", "usa", True),
    ("Oklahoma on map of usa — ストック写真", "—", True),
    ("北京天安门广场的照片", "天安门", True),
    ("北京天安门广场的照片", "北京天安门广场的照片", True),
    ("这是一张猫的照片。", "照片", True),
    ("《红楼梦》第一回", "红楼梦", True),
    ("「東京タワー」の夜景", "東京タワー", False),  # ends in kana: padded after
    ("東京タワー 夜景", "東京タワー", True),
    ("ภาพถ่ายแมวน่ารัก", "แมว", True),  # Thai, no spaces between words
    ("ภาพถ่ายแมวน่ารัก", "ภาพถ่าย", True),
    ("ພາບແມວ", "ແມວ", True),  # Lao
    ("صورة قطة جميلة", "قطة", True),  # Arabic: spaced, as v1
    ("صورة قطةجميلة", "قطة", False),
    ("صورة قطة، جميلة", "قطة", False),  # Arabic comma is not MetaCLIP's punctuation
    ("카메라 사진", "사진", True),  # Hangul: padded, spaced text matches
    ("카메라사진", "사진", False),
    ("a dog-house", "-house", True),  # starts with punctuation: no pad before
    ("U.S. army", "U.S.", False),  # the text's dots are spaced apart, as v1
    ("(dog) house", "(dog)", True),
    ("hot dog, yes", "dog", True),
    ("hotdog", "dog", False),
]


@pytest.mark.parametrize(("text", "entry", "hit"), CASES)
def test_hand_made_cases(text, entry, hit):
    assert (Matcher([entry], pad_metaclip2)(text) == [0]) is hit
    assert (ref_match(text, [entry]) == [0]) is hit


def test_unspaced_characters_are_metaclip2s():
    rng = random.Random(0)
    points = list(range(0x3000)) + [rng.randrange(0x3000, 0x110000) for _ in range(20_000)]
    for lo, hi in REF_RANGES:
        points += [lo - 1, lo, hi, hi + 1]
    for code in points:
        if not 0xD800 <= code <= 0xDFFF:
            assert unspaced(chr(code)) == ref_unspaced(chr(code)), hex(code)


def test_an_empty_entry_is_padded_as_in_v1():
    assert pad_metaclip2("") == "  "


def laion_texts():
    path = SHARED_DATA / "laion-alt-10k.jsonl"
    if not os.path.exists(path):
        pytest.skip("shared data absent")
    texts = [orjson.loads(line).get("alt") for line in open(path, "rb")]
    return [t for t in texts if isinstance(t, str)]


def entries_from(texts, rng):
    """Words, CJK and Thai substrings, punctuation-bounded pieces of the texts."""
    entries = set()
    for text in rng.sample(texts, 400):
        words = text.split()
        if words:
            entries.add(rng.choice(words))
        wide = [i for i, c in enumerate(text) if ref_unspaced(c) and c not in REF_PUNCT]
        if wide:
            i = rng.choice(wide)
            entries.add(text[i : i + rng.randint(1, 3)])
        marks = [i for i, c in enumerate(text) if c in REF_PUNCT]
        if marks:
            i = rng.choice(marks)
            entries.add(text[max(0, i - 3) : i + 1])
    return sorted(e for e in entries if e.strip())


def test_laion_texts_match_as_the_reference_does():
    texts = laion_texts()
    rng = random.Random(1)
    entries = entries_from(texts, rng)
    wide = [t for t in texts if any(ref_unspaced(c) and c not in REF_PUNCT for c in t)]
    assert len(wide) > 20  # the pool has CJK and Thai texts to try
    matcher = Matcher(entries, pad_metaclip2)
    sample = wide + rng.sample(texts, 1500)
    found = matcher.find_many(sample)
    assert found == [ref_match(t, entries) for t in sample]
    assert sum(map(bool, found)) > len(sample) // 2


def test_laion_texts_match_their_languages_list():
    """LID, then the reference over the detected language's list."""
    texts = laion_texts()[:1500]
    lid = LanguageId()
    rng = random.Random(2)
    langs = {lang for lang, _ in map(lid, texts)}
    per_lang = {
        lang: entries_from(texts, rng)[: rng.randint(5, 200)] for lang in ("en", "fr", "ja")
    }
    languages = _languages(per_lang)
    world = WorldMatcher(languages, pad_metaclip2, lid)
    for text, found in zip(texts, world.find_many(texts), strict=True):
        lang, conf = lid(text)
        assert (found.lang, found.conf) == (lang, conf) and 0 <= conf <= 1
        if lang not in per_lang:
            assert found.ids is None
            continue
        assert found.local == ref_match(text, per_lang[lang])
        offset = languages.spans[lang][0]
        assert found.ids == [offset + i for i in found.local]
    assert {"en", "fr", "ja"} <= langs


def _languages(per_lang, tmp=None):
    import tempfile

    folder = tmp or tempfile.mkdtemp()
    for lang, entries in per_lang.items():
        with open(os.path.join(folder, f"{lang}.json"), "wb") as f:
            f.write(orjson.dumps(entries))
    return read_languages(folder)


def test_language_identification():
    lid = LanguageId()
    assert lid("a photo of a dog on the beach")[0] == "en"
    assert lid("東京タワーの夜景の写真")[0] == "ja"
    assert lid("ภาพถ่ายแมวน่ารักบนโซฟา")[0] == "th"
    assert lid("صورة قطة جميلة على الأريكة")[0] == "ar"
    assert lid("line one\nline two in English")[0] == "en"
    lang, conf = lid("")
    assert isinstance(lang, str) and 0 <= conf <= 1


def test_the_metadata_folder(tmp_path):
    (tmp_path / "en.json").write_bytes(orjson.dumps(["dog", "cat"]))
    (tmp_path / "ja.json").write_bytes(orjson.dumps(["写真"]))
    (tmp_path / "zh.txt").write_text("照片\n猫\n")
    (tmp_path / "ja.pkl").write_bytes(b"never unpickled")
    (tmp_path / "README").write_text("ignored")
    languages = read_languages(str(tmp_path))
    assert languages.entries == ["dog", "cat", "写真", "照片", "猫"]
    assert languages.spans == {"en": (0, 2), "ja": (2, 1), "zh": (3, 2)}
    (tmp_path / "en.txt").write_text("dog\n")
    with pytest.raises(VecapError, match="two lists for 'en'"):
        read_languages(str(tmp_path))
    with pytest.raises(VecapError, match="must be a folder"):
        read_languages(str(tmp_path / "ja.json"))


def test_an_empty_folder_is_refused(tmp_path):
    with pytest.raises(VecapError, match=r"no LANG\.json"):
        read_languages(str(tmp_path))


def ref_t_to_p(counts, t):
    return sum(c for c in counts if c < t) / sum(counts)


def ref_p_to_t(counts, p):
    ordered = sorted(counts)
    total, running, best = sum(ordered), 0, None
    for c in ordered:
        running += c
        gap = abs(running / total - p)
        if best is None or gap < best[0]:  # the first nearest, as argmin
            best = (gap, c)
    return best[1]


def test_per_language_t_follows_english_tail_share():
    """A synthetic pool of counts (Zipf-like, with never-counted entries): each
    language's t holds the tail share English holds below its t."""
    rng = random.Random(3)
    per_lang = {
        lang: [int(n * 5000 / (rank + 1) ** 1.1) if rng.random() > 0.1 else 0 for rank in range(n)]
        for lang, n in (("en", 3000), ("de", 800), ("ja", 1200), ("th", 90), ("xx", 40))
    }
    per_lang["xx"] = [0] * 40  # no matches: no t needed
    languages = _languages(
        {lang: [f"{lang}{i}" for i in range(len(c))] for lang, c in per_lang.items()}
    )
    counts = [c for lang in sorted(per_lang) for c in per_lang[lang]]
    t = 2000
    ts = language_ts(counts, languages, t)
    p = ref_t_to_p(per_lang["en"], t)
    assert t_to_p(per_lang["en"], t) == pytest.approx(p, rel=1e-12)
    assert ts == {
        "de": ref_p_to_t(per_lang["de"], p),
        "en": t,
        "ja": ref_p_to_t(per_lang["ja"], p),
        "th": ref_p_to_t(per_lang["th"], p),
    }
    for lang in ("de", "ja", "th"):  # the same tail share, to the nearest count
        assert p_to_t(per_lang[lang], p) == ts[lang]
        share = ref_t_to_p(per_lang[lang], ts[lang] + 1)  # the tail up to and with t
        assert abs(share - p) < 0.2
    fixed = language_ts(counts, languages, t, {"ja": 77})
    assert fixed["ja"] == 77 and fixed["de"] == ts["de"]
    probs = probabilities(counts, languages, ts)
    start = languages.spans["ja"][0]
    for i, c in enumerate(per_lang["ja"]):
        assert probs[start + i] == (ts["ja"] / c if c > ts["ja"] else 1.0)


def test_no_english_match_cannot_give_other_languages_a_t():
    languages = _languages({"en": ["dog"], "ja": ["写真"]})
    with pytest.raises(VecapError, match="--t-per-lang"):
        language_ts([0, 5], languages, 10)
    assert language_ts([0, 5], languages, 10, {"ja": 3}) == {"ja": 3}


def fake_lid(text):
    """The language a test names: the text's first word ("ru: ..."), "" when none."""
    lang, _, _ = text.partition(":")
    return (lang, 0.5) if lang in ("en", "ja", "ru", "sw") else ("", 0.0)


def test_texts_without_a_list_are_matched_against_other(tmp_path):
    """MetaCLIP 2's lid_langcode_to_metadata_langcode: a language with no list, or
    none identified (""), goes to 'other'; a language with a list keeps its own."""
    per_lang = {"en": ["dog", "photo"], "ja": ["写真"], "other": ["собака", "dog", "mbwa"]}
    languages = _languages(per_lang, str(tmp_path))
    assert list(languages.spans) == ["en", "ja", "other"]
    world = WorldMatcher(languages, pad_metaclip2, fake_lid)
    texts = [
        "en: a dog photo",  # its own list: "dog" of en, not of other
        "ja: 犬の写真",
        "ru: фото собака",  # no ru list: other
        "sw: picha ya mbwa dog",  # no sw list: other, where "dog" is other's
        "фото собака",  # no language identified: other
        "ru: кошка",  # other, matching nothing
    ]
    found = world.find_many(texts)
    rows = [(f.lang, f.listed, f.local) for f in found]
    assert rows == [
        ("en", "en", [0, 1]),
        ("ja", "ja", [0]),
        ("ru", "other", [0]),
        ("sw", "other", [1, 2]),
        ("", "other", [0]),
        ("ru", "other", []),
    ]
    start = languages.spans["other"][0]
    assert found[3].ids == [start + 1, start + 2]
    for text, (_, listed, local) in zip(texts, rows, strict=True):
        assert local == ref_match(text, per_lang[listed])


def test_without_other_a_language_without_a_list_matches_nothing(tmp_path):
    languages = _languages({"en": ["dog"], "ja": ["写真"]}, str(tmp_path))
    world = WorldMatcher(languages, pad_metaclip2, fake_lid)
    found = world.find_many(["ru: собака dog", "dog", "en: dog"])
    assert [(f.lang, f.listed, f.ids) for f in found] == [
        ("ru", None, None),
        ("", None, None),
        ("en", "en", [0]),
    ]


def test_other_takes_its_t_from_englishs_tail_share(tmp_path):
    """MetaCLIP 2's global_count: every list but English's, 'other' too, gets
    p_to_t(its counts, t_to_p(English's counts, t))."""
    per_lang = {"en": [f"e{i}" for i in range(6)], "other": [f"o{i}" for i in range(5)]}
    languages = _languages(per_lang, str(tmp_path))
    en, other = [50, 30, 9, 4, 0, 1], [7, 3, 80, 0, 12]
    ts = language_ts(en + other, languages, 10)
    assert ts == {"en": 10, "other": ref_p_to_t(other, ref_t_to_p(en, 10))}
    assert language_ts(en + other, languages, 10, {"other": 5})["other"] == 5
