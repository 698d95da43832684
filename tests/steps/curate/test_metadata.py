"""Metadata files (MetaCLIP's JSON list, or lines) and the builder."""

import gzip
import os

import orjson
import pytest

from vecap_cli.errors import VecapError
from vecap_cli.steps.curate.metadata import (
    TitleRule,
    build,
    corpus_ngrams,
    metadata_bytes,
    pageviews,
    read_metadata,
    titles,
    wiki_titles,
    wordnet_names,
)

HEADER = "  1 This software and database is being provided to you, the LICENSEE, by  \n"


@pytest.fixture
def wordnet(tmp_path):
    """A WordNet dict folder in the real format, a few synsets per part of speech."""
    lines = {
        "data.noun": [
            "02084071 05 n 03 dog 0 domestic_dog 0 Canis_familiaris 0 023 @ 02083346 n 0000 | a dog",
            "07697537 13 n 02 hotdog 0 hot_dog 0 000 | a frankfurter",
            "09071690 15 n 02 St._Louis 0 St_Louis 0 000 | a city",
            "08932568 15 n 02 Paris 0 City_of_Light 0 000 | the capital",
        ],
        "data.verb": ["01047745 32 v 01 dog 0 000 | go after"],
        "data.adj": ["00020103 00 s 02 outback(a) 0 remote 0 000 | inaccessible"],
        "data.adv": ["00001740 02 r 01 a.d. 0 000 | anno Domini"],
    }
    for name, synsets in lines.items():
        (tmp_path / name).write_text(HEADER + "".join(f"{s}  \n" for s in synsets))
    return tmp_path


def test_wordnet_names_follow_metaclip_on_nltk(wordnet):
    # the first lemma, lowercased, cut at the first '.', '_' -> ' ', marker dropped
    assert list(wordnet_names(str(wordnet))) == [
        "dog", "hotdog", "st", "paris", "dog", "outback", "a",
    ]  # fmt: skip


def test_a_missing_wordnet_is_one_clear_error(tmp_path):
    with pytest.raises(VecapError, match=r"cannot read WordNet .*data.noun.*wordnet-base"):
        list(wordnet_names(str(tmp_path)))


@pytest.mark.skipif(not os.path.isdir("/usr/share/wordnet"), reason="needs wordnet-base")
def test_real_wordnet():
    names = set(wordnet_names("/usr/share/wordnet"))
    assert len(names) > 80_000
    assert {"dog", "hotdog", "new york", "paris", "st"} <= names


def test_build_seeds_numbers_dedups_skips_and_caps():
    entries, added = build(
        [("a", ["dog", "", "!", "dog", "7", "!!", "cat"]), ("b", ["cat", "cow", "pig"])],
        max_entries=104,
    )
    assert entries[:100] == [str(i) for i in range(100)]
    assert entries[100:] == ["dog", "!!", "cat", "cow"]
    assert added == {"numbers": 100, "a": 3, "b": 1}


def test_corpus_unigrams_by_count_and_bigrams_by_pmi():
    lines = ["new york is big, new york is old"] * 3 + ["the cat is big"] * 2 + ["zebra crossing"]
    unigrams, bigrams = corpus_ngrams(lines, min_count=5, min_pmi=2.0)
    assert unigrams == ["is", "new", "york", "big"]  # 8, 6, 6, 5 times
    assert bigrams[0] == "zebra crossing"  # seen once, its words once: the highest PMI
    assert "big new" not in bigrams  # a bigram never spans punctuation ("big, new")
    assert "new york" in bigrams


def test_titles_read_underscores_as_spaces():
    assert list(titles(["New_York_City\n", "  \n", "Paris \n"])) == ["New York City", "Paris"]


# Wikimedia's hourly pageview dumps: domain code, title, views, response size (0)
HOUR_1 = [
    "en Main_Page 500 0",
    "en Talk:Main_Page 90 0",  # a namespace: dropped
    "en File:Cat.jpg 80 0",
    "en Star_Wars:_Episode_IV 70 0",  # a colon: MetaCLIP drops these too
    "en Quiet_Village 49 0",  # below 50 in this hour: not counted
    "en Hot_dog 40 0",
    "en.m Hot_dog 900 0",  # the mobile site: another domain code
    "de Hund 300 0",  # another language
    "en broken line",  # another shape: skipped
    "en Odd_count many 0",
]
HOUR_2 = ["en Hot_dog 60 0", "en Quiet_Village 49 0", "en Rare_Page 50 0", "en Main_Page 20 0"]


def test_pageview_lines_count_from_50_views_in_the_project_without_colons():
    views = pageviews([*HOUR_1, *HOUR_2], TitleRule())
    assert views == {
        "Main Page": 500,  # the 20 of hour 2 is below 50
        "Talk:Main Page": 90,
        "File:Cat.jpg": 80,
        "Star Wars: Episode IV": 70,
        "Hot dog": 60,
        "Rare Page": 50,
    }  # colons are dropped by wiki_titles, after the views are summed


def test_titles_keep_metaclips_rule_most_viewed_first(tmp_path):
    (tmp_path / "pageviews-20220829-000000.gz").write_bytes(
        gzip.compress("\n".join(HOUR_1).encode())
    )
    (tmp_path / "pageviews-20220829-010000").write_text("\n".join(HOUR_2) + "\n")
    (tmp_path / "title_counts.json").write_bytes(orjson.dumps({"Rare_Page": 30, "Paris": 75}))
    (tmp_path / "extra.txt").write_text("Tokyo\nUser:Someone\n")
    paths = [str(tmp_path / n) for n in sorted(os.listdir(tmp_path))]  # extra, pageviews, title
    assert wiki_titles(paths, TitleRule()) == ["Main Page", "Rare Page", "Paris", "Tokyo"]
    # Rare Page: 50 + 30 views; Hot dog: 60 < 70; plain lists come last, colon rule too
    assert wiki_titles(paths, TitleRule(min_views=60, colons=True)) == [
        "Main Page", "Talk:Main Page", "File:Cat.jpg", "Rare Page", "Paris",
        "Star Wars: Episode IV", "Hot dog", "Tokyo", "User:Someone",
    ]  # fmt: skip
    mobile = TitleRule(project="en.m", min_views=0)
    assert wiki_titles(paths[1:3], mobile) == ["Hot dog"]


def test_a_title_views_file_that_is_no_object_is_one_line(tmp_path):
    (tmp_path / "t.json").write_bytes(b'["Paris"]')
    with pytest.raises(
        VecapError, match=r"titles '.*t\.json' must be a JSON object: title -> views"
    ):
        wiki_titles([str(tmp_path / "t.json")], TitleRule())


def test_json_and_line_files_give_the_same_metadata(tmp_path):
    entries = ["dog", "hot dog", "日本", '"quoted"']
    (tmp_path / "m.json").write_bytes(metadata_bytes("m.json", entries))
    (tmp_path / "m.txt").write_bytes(metadata_bytes("m.txt", entries))
    (tmp_path / "m.json.gz").write_bytes(gzip.compress(orjson.dumps(entries)))
    read = [read_metadata(str(tmp_path / n)) for n in ("m.json", "m.txt", "m.json.gz")]
    assert all(m.entries == entries for m in read)
    assert len({m.sha256 for m in read}) == 1
    assert read_metadata(str(tmp_path / "m.txt")).sha256 != read_metadata_of(tmp_path, ["dog"])


def read_metadata_of(tmp_path, entries):
    path = tmp_path / "other.json"
    path.write_bytes(orjson.dumps(entries))
    return read_metadata(str(path)).sha256


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        ("m.json", b"{not json", "is not JSON"),
        ("m.json", b'{"a": 1}', "must be a JSON list of strings"),
        ("m.json", b'["a", 3]', "entry 1 is a int, not a string"),
        ("m.txt", b"a\n\nb\n", "line 2 is empty"),
        ("m.txt", b"a\xff\n", "is not UTF-8"),
    ],
)
def test_bad_metadata_files_are_one_clear_error(tmp_path, name, data, message):
    (tmp_path / name).write_bytes(data)
    with pytest.raises(VecapError, match=message):
        read_metadata(str(tmp_path / name))


def test_a_missing_metadata_file(tmp_path):
    with pytest.raises(VecapError, match=r"cannot read metadata .*No such file"):
        read_metadata(str(tmp_path / "nope.json"))


def test_line_files_cannot_hold_line_breaks():
    with pytest.raises(VecapError, match=r"write the metadata as .json"):
        metadata_bytes("m.txt", ["a\nb"])
