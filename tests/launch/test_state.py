"""The state folder: markers by name, task ranges, a damaged record."""

import pytest

from vecap_cli.errors import VecapError
from vecap_cli.launch.state import Launch, State, default_folder, task_ranges
from vecap_cli.launch.step import Step


@pytest.mark.parametrize(
    ("tasks", "text"),
    [([0, 1, 2, 3], "0-3"), ([3, 1], "1,3"), ([0, 1, 2, 5, 7, 8], "0-2,5,7-8"), ([4], "4")],
)
def test_task_ranges_read_as_slurm_arrays(tasks, text):
    assert task_ranges(tasks) == text


def test_only_whole_markers_count_and_a_fresh_launch_forgets_them(tmp_path):
    state = State(str(tmp_path / "st"))
    launch = Launch(Step(("mix",), ("in.jsonl",), "out/%d.tar"), 4, str(tmp_path))
    state.begin(launch, resume=False)
    for name in ("1", "3.tmp", "x"):  # a marker, one being written, a stranger
        (tmp_path / "st" / "done" / name).touch()
    assert state.pending(4) == [0, 2, 3]
    assert state.read() == launch
    state.begin(launch, resume=True)
    assert state.pending(4) == [0, 2, 3]
    state.begin(launch, resume=False)
    assert state.pending(4) == [0, 1, 2, 3]


def test_a_damaged_launch_record_is_one_line(tmp_path):
    (tmp_path / "launch.json").write_text("{")
    with pytest.raises(VecapError, match="is damaged"):
        State(str(tmp_path)).read()


def test_the_state_defaults_to_the_folder_of_the_output():
    assert default_folder(Step(("mix",), (), "out/%06d.tar")) == "out/.vecap-launch"
    assert default_folder(Step(("curate", "count"), (), "counts.json")) == "./.vecap-launch"
