"""`vecap launch --merge`: the tasks' --rejects joined into one file."""

import os

import orjson
import pytest

from tests.conftest import make_records, run_vecap
from tests.launch.test_slurm import run_task
from vecap_cli.errors import VecapError
from vecap_cli.launch.merge import merge
from vecap_cli.launch.state import Launch, State
from vecap_cli.launch.step import Step


def bad_pool(path, n=120):
    """A JSONL of `n` records, every 7th line one that is rejected."""
    lines = [orjson.dumps(r) for r in make_records(n)]
    for at in range(3, len(lines), 7):
        lines[at] = b"[%d]" % at if at % 2 else b'{"no": "key"}'
    path.write_bytes(b"\n".join(lines) + b"\n")


def test_tasks_sharing_one_input_merge_into_one_process_rejects_byte_for_byte(tmp_path):
    bad_pool(tmp_path / "in.jsonl")
    step = ("mix", "in.jsonl", "--shard-size", 10, "--rejects", "out/rejects.jsonl")
    launched = run_vecap(
        "launch", "--engine", "slurm", "--tasks", 3, "--dry-run",
        "--", *step, "-o", "out/%03d.jsonl", "--stats", "out/stats.json",
        cwd=tmp_path,
    )  # fmt: skip
    assert launched.code == 0, launched.err
    state = State(str(tmp_path / "out" / ".vecap-launch"))
    for task in range(3):
        assert run_task(tmp_path / "out" / ".vecap-launch", task).returncode == 0

    size = (tmp_path / "in.jsonl").stat().st_size
    for task in range(3):
        written = orjson.loads(open(state.progress_file(task), "rb").read())
        assert written.pop("time") > 0
        assert written == {
            "in": 40,
            "out": written["out"],
            "bytes_done": size,  # each task reads the whole input, keeps every 3rd record
            "bytes_total": size,
            "shares_records": True,
            "done": True,
        }
    watched = run_vecap("launch", "--watch", state.folder)
    assert watched.code == 0, watched.err
    out = sum(orjson.loads(open(state.progress_file(t), "rb").read())["out"] for t in range(3))
    assert watched.err.splitlines()[-1] == (
        f"vecap launch: 3/3 tasks done · 120 in · {out} out · "
        f"{3 * size / 1000:.1f} kB of {3 * size / 1000:.1f} kB read"
    )

    merged = run_vecap("launch", "--merge", state.folder)
    assert merged.code == 0, merged.err
    assert "in one process's order" in merged.err
    one = run_vecap(*step[:2], "-o", "one.jsonl", "--rejects", "one.rejects.jsonl", cwd=tmp_path)
    assert one.code == 0, one.err
    expected = (tmp_path / "one.rejects.jsonl").read_bytes()
    assert expected.count(b"\n") == 17
    assert (tmp_path / "out" / "rejects.jsonl").read_bytes() == expected


def launch_in(tmp_path, tasks: int, rejects: str | None, stats: str | None = None):
    state = State(str(tmp_path / "state"))
    step = Step(("mix",), ("x",), "out/%d.jsonl", stats, rejects)
    launch = Launch(step, tasks, str(tmp_path))
    state.begin(launch, resume=False)
    for task in range(tasks):
        open(os.path.join(state.done_dir, str(task)), "w").close()
    return state


def reject(idx: int, origin: str) -> bytes:
    line = {"reason": "r", "detail": "", "origin": origin, "idx": idx, "raw": '"idx":1'}
    return orjson.dumps(line, option=orjson.OPT_APPEND_NEWLINE)


def progress_of(state: State, tasks: int, shares: bool) -> None:
    for task in range(tasks):
        progress = {"in": 1, "out": 1, "bytes_done": 1, "bytes_total": 1}
        progress |= {"shares_records": shares, "done": True}
        open(state.progress_file(task), "wb").write(orjson.dumps(progress))


def test_renumbering_touches_only_the_idx_field(tmp_path):
    state = launch_in(tmp_path, 2, str(tmp_path / "rej.jsonl"))
    hostile = 'f"idx":0:1'  # an origin (a file name) that looks like the field
    (tmp_path / "rej.rank0.jsonl").write_bytes(
        reject(0, hostile) + reject(-1, "f") + reject(2, "g")
    )
    (tmp_path / "rej.rank1.jsonl").write_bytes(reject(1, hostile))
    progress_of(state, 2, shares=True)
    merge(state, lambda line: None)
    expected = reject(0, hostile) + reject(-1, "f") + reject(3, hostile) + reject(4, "g")
    assert (tmp_path / "rej.jsonl").read_bytes() == expected


def test_tasks_reading_whole_inputs_are_joined_in_task_order(tmp_path):
    """Task r's idx counts within its own inputs: one process's ordinal is not known."""
    state = launch_in(tmp_path, 2, str(tmp_path / "rej.jsonl"))
    parts = [reject(0, "a:1") + reject(5, "c:2"), reject(1, "b:2")]
    for task, part in enumerate(parts):
        (tmp_path / f"rej.rank{task}.jsonl").write_bytes(part)
    progress_of(state, 2, shares=False)
    notes = []
    merge(state, notes.append)
    assert (tmp_path / "rej.jsonl").read_bytes() == parts[0] + parts[1]
    assert notes == [
        f"joined the rejects of 2 tasks into {tmp_path}/rej.jsonl: 3 lines, in task order"
    ]


def test_without_progress_files_the_rejects_are_joined_in_task_order_with_a_note(tmp_path):
    state = launch_in(tmp_path, 2, str(tmp_path / "rej-{rank}.jsonl"))
    (tmp_path / "rej-0.jsonl").write_bytes(reject(0, "a:1"))
    (tmp_path / "rej-1.jsonl").write_bytes(reject(0, "a:2") + b"{}")  # no newline at the end
    notes = []
    merge(state, notes.append)
    assert (tmp_path / "rej-all.jsonl").read_bytes() == reject(0, "a:1") + reject(
        0, "a:2"
    ) + b"{}\n"
    assert notes[0].startswith("note: task 0 left no progress file")


def test_a_missing_or_damaged_rejects_file_is_one_line(tmp_path):
    state = launch_in(tmp_path, 2, str(tmp_path / "rej.jsonl"))
    with pytest.raises(VecapError, match=r"rej\.rank0\.jsonl' is missing"):
        merge(state, lambda line: None)
    for task in range(2):
        (tmp_path / f"rej.rank{task}.jsonl").write_bytes(b"not json\n")
    progress_of(state, 2, shares=True)
    with pytest.raises(VecapError, match=r"rej\.rank0\.jsonl' is not a vecap --rejects file"):
        merge(state, lambda line: None)
    assert not (tmp_path / "rej.jsonl").exists() and not (tmp_path / "rej.jsonl.tmp").exists()


def test_a_launch_json_from_before_rejects_still_merges_its_stats(tmp_path):
    state = launch_in(tmp_path, 2, None, str(tmp_path / "s.json"))
    old = orjson.loads(open(state.path("launch.json"), "rb").read())
    del old["step"]["rejects"]
    open(state.path("launch.json"), "wb").write(orjson.dumps(old))
    one = {"command": "mix", "in": 2, "out": 1, "dropped": {"x": 1}, "rejected": {}}
    one |= {"added": {}, "balanced": True, "seconds": 0.5}
    for task in range(2):
        (tmp_path / f"s.rank{task}.json").write_bytes(orjson.dumps(one))
    tally = merge(state, lambda line: None)
    assert tally is not None and (tally.n_in, tally.n_out) == (4, 2)
    assert orjson.loads((tmp_path / "s.json").read_bytes())["dropped"] == {"x": 2}


def test_nothing_to_merge_is_one_line(tmp_path):
    state = launch_in(tmp_path, 2, None)
    with pytest.raises(VecapError, match="wrote no --stats or --rejects"):
        merge(state, lambda line: None)
