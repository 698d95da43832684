import pytest

from tests.conftest import REPO

manpages = pytest.importorskip(
    "vecap_cli.cli.manpages", reason="click-man (dev extra) not installed"
)


def test_man_pages_are_up_to_date(tmp_path):
    committed = {p.name: p.read_text() for p in (REPO / "man").glob("*.1")}
    for name, text in committed.items():
        (tmp_path / name).write_text(text)
    changed = manpages.write(str(tmp_path))
    assert changed == [], f"man/ is stale for {changed}: run `make man`"
    assert set(committed) == {p.name for p in tmp_path.glob("*.1")}


def test_every_command_has_a_page():
    names = set(manpages.pages())
    assert {"vecap.1", "vecap-mix.1", "vecap-curate.1", "vecap-train.1", "vecap-eval.1"} <= names


def test_every_see_also_names_a_page_that_exists():
    import re

    texts = manpages.pages()
    for name, text in texts.items():
        for ref in re.findall(r"See \\fB([^(]+)\(1\)\\fP", text):
            assert f"{ref}.1" in texts, (name, ref)
