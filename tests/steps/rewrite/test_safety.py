import orjson
import pytest

from tests.conftest import SHARED_DATA
from vecap_cli.errors import VecapError
from vecap_cli.steps.rewrite.safety import Blocklist, load_terms


def test_the_default_list_ships_with_the_package_and_blocks_the_obvious():
    terms = load_terms()
    assert "porn" in terms and "nsfw" in terms
    blocklist = Blocklist(terms)
    assert blocklist.hit("Hot NSFW pics") == "nsfw"
    assert blocklist.hit("A red barn in Vermont") is None


def test_terms_match_whole_words_case_insensitively_and_across_spaces():
    blocklist = Blocklist(["gore", "sex video"])
    assert blocklist.hit("GORE warning") == "gore"
    assert blocklist.hit("Al Goretex jacket") is None
    assert blocklist.hit("a sex   video still") == "sex   video"
    assert blocklist.hit("sextant and video") is None


def test_a_list_file_skips_comments_and_blanks(tmp_path):
    path = tmp_path / "block.txt"
    path.write_text("# comment\n\nFoo Bar  # trailing\nbaz\n")
    assert load_terms(str(path)) == ["foo bar", "baz"]


def test_a_missing_list_is_one_line(tmp_path):
    with pytest.raises(VecapError, match=r"cannot read blocklist '.*nope\.txt'"):
        load_terms(str(tmp_path / "nope.txt"))


def test_an_empty_list_blocks_nothing():
    assert Blocklist([]).hit("anything at all") is None


def test_on_10k_real_alttexts_the_quick_guard_misses_no_hit():
    laion = SHARED_DATA / "laion-alt-10k.jsonl"
    if not laion.exists():
        pytest.skip("../shared/data/laion-alt-10k.jsonl is not here")
    alts = [orjson.loads(line)["alt"] for line in laion.read_bytes().splitlines()]
    blocklist = Blocklist(["red", "new york", "wall art", "iphone", "t-shirt", "c++", "gold"])
    hits = [blocklist.hit(alt) for alt in alts]
    assert [hit for hit in hits if hit] and None in hits
    assert hits == [blocklist._search(alt.lower()) for alt in alts]  # the pattern alone
