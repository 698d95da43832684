"""Adding the tasks' --stats up: counts add, a description shared by all is kept."""

import pytest

from vecap_cli.errors import VecapError
from vecap_cli.launch.merge import add_up


def stats(n_in, out, dropped=None, **own):
    dropped = dropped or {}
    return {
        "command": "mix",
        "in": n_in,
        "out": out,
        "dropped": dropped,
        "rejected": {},
        "added": {},
        "balanced": True,
        "seconds": n_in / 10,
        **own,
    }


def merged(*tasks, notes=None):
    names = [f"s.rank{i}.json" for i in range(len(tasks))]
    log = notes.append if notes is not None else lambda line: None
    return add_up(tasks, names, log).as_dict()


def test_counts_add_up_and_a_shared_description_is_kept():
    summary = {"metadata": {"sha256": "ab", "entries": 9}, "t": 200}
    total = merged(
        stats(10, 7, {"no-caption": 3}, chosen={"alt": 7}, kept=7, curate=summary),
        stats(5, 4, {"no-caption": 1}, chosen={"alt": 1, "vecap": 3}, kept=4, curate=summary),
    )
    assert total["in"] == 15 and total["out"] == 11 and total["balanced"]
    assert total["dropped"] == {"no-caption": 4}
    assert total["chosen"] == {"alt": 8, "vecap": 3}
    assert total["kept"] == 11
    assert total["curate"] == summary
    assert total["seconds"] == pytest.approx(1.0, abs=0.01)  # the slowest task's


def test_a_description_that_differs_between_tasks_is_left_out_with_a_note():
    notes = []
    total = merged(stats(1, 1, curate={"matches": 1}), stats(1, 1, curate={"x": "y"}), notes=notes)
    assert "curate" not in total
    assert notes == ["note: 'curate' differs between the tasks' stats: left out of the merge"]


def test_float_counts_are_rounded_as_one_process_rounds_them():
    total = merged(stats(1, 1, expected_kept=0.1), stats(1, 1, expected_kept=0.2))
    assert total["expected_kept"] == 0.3


@pytest.mark.parametrize(
    ("second", "says"),
    [
        (stats(5, 4), "'s.rank1.json' does not balance"),
        ({"in": 1}, "'s.rank1.json' is not a vecap --stats file"),
        ({**stats(1, 1), "command": "caption"}, "different commands: caption, mix"),
    ],
)
def test_what_cannot_be_added_up_is_refused(second, says):
    with pytest.raises(VecapError, match=says):
        merged(stats(1, 1), second)
