import pytest

from vecap_cli.steps.curate.filters import Dedup, basic_text_filter, normalize, strip_html


def test_datacomp_basic_filter_needs_more_than_2_words_and_5_characters():
    assert basic_text_filter("a red cube")
    assert not basic_text_filter("red cube")  # 2 words
    assert not basic_text_filter("a b c")  # 5 characters
    assert basic_text_filter("a b cd")


def test_html_tags_go_then_entities_unescape():
    assert strip_html("<b>Red</b>&nbsp;cube &amp; ball") == " Red \xa0cube & ball"
    assert strip_html("I &lt;3 cats") == "I <3 cats"  # escaped text is not a tag
    assert strip_html("plain") == "plain"


def test_dedup_by_url_and_by_normalized_text_keeps_the_first():
    dedup = Dedup(("url", "text"))
    assert dedup.rule({"url": "u1"}, "A  Red cube") is None
    assert dedup.rule({"url": "u1"}, "other") == "duplicate-url"
    assert dedup.rule({"url": "u2"}, "a red CUBE") == "duplicate-text"
    assert dedup.rule({}, "no url") is None  # a missing url is not a duplicate
    assert dedup.rule({}, "No  url ") == "duplicate-text"
    assert normalize(" A\tb ") == "a b"


def test_dedup_kinds_are_checked():
    with pytest.raises(ValueError, match="unknown dedup kind 'key'"):
        Dedup(("key",))
