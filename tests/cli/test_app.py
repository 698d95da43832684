import os
import re
import subprocess
import sys

from tests.conftest import run_vecap
from vecap_cli.cli.app import COMMANDS


def test_help_lists_every_command_with_a_summary():
    result = run_vecap("--help")
    assert result.code == 0
    text = result.out.decode()
    for command in COMMANDS:
        assert f" {command} " in text
    panel = text[text.index("Commands") :]
    assert sorted(COMMANDS, key=lambda c: panel.index(f" {c} ")) == list(COMMANDS)  # in order


def test_module_and_version():
    assert run_vecap("--version").out.decode().startswith("vecap ")


def test_record_commands_do_not_import_torch():
    code = (
        "import sys\n"
        "from vecap_cli.cli.app import main\n"
        "try:\n    main(['mix', '--help'])\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('torch', 'numpy', 'webdataset', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip().splitlines()[-1] == "[]"


def test_rank_falls_back_to_torchrun_then_slurm_env(tmp_path):
    pool = tmp_path / "p.jsonl"
    pool.write_text("".join(f'{{"key": "{i}", "alt": "x"}}\n' for i in range(10)))
    torchrun = run_vecap("mix", pool, "-q", env={"RANK": "1", "WORLD_SIZE": "2"})
    slurm = run_vecap("mix", pool, "-q", env={"SLURM_PROCID": "1", "SLURM_NTASKS": "2"})
    flags = run_vecap("mix", pool, "-q", "--rank", "1", "--world-size", "2")
    assert [r["key"] for r in flags.records()] == ["1", "3", "5", "7", "9"]
    assert torchrun.records() == slurm.records() == flags.records()


def _on_a_terminal(*args) -> bytes:
    """What `vecap ARGS` writes to stderr when stderr is a terminal (a pty), its
    colours taken out; stdout to nowhere."""
    import pty

    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "vecap_cli", *map(str, args)],
        stderr=follower,
        stdout=subprocess.DEVNULL,
    )
    os.close(follower)
    seen = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the terminal closes when vecap exits
            break
        if not chunk:
            break
        seen += chunk
    os.close(leader)
    assert proc.wait() == 0
    return re.sub(rb"\x1b\[[0-9;?]*[A-Za-z]", b"", seen)


def test_progress_shows_on_a_terminal_and_not_in_logs(tmp_path):
    pool = tmp_path / "p.jsonl"
    pool.write_text("".join(f'{{"key": "{i}", "alt": "x"}}\n' for i in range(50_000)))
    seen = _on_a_terminal("mix", pool, "-o", tmp_path / "o.jsonl")
    assert b" in \xc2\xb7 " in seen  # the live count: "N in \xc2\xb7 M out"
    assert b"vecap mix: in 50,000 = out 50,000" in seen
    logged = run_vecap("mix", pool, "-o", tmp_path / "o2.jsonl")
    assert logged.err.strip().splitlines() == [logged.err.strip()]  # the summary line only
    quiet = _on_a_terminal("mix", pool, "-q", "-o", tmp_path / "o3.jsonl")
    assert b" in \xc2\xb7 " not in quiet and b"vecap mix" not in quiet


# the time left; "-:--:--" while rich has too few updates to estimate a speed (a
# machine fast enough to read the whole pool within one or two updates)
ETA = rb"ETA (\d+:\d\d:\d\d|-:--:--)"


def _big_pool(tmp_path):
    """About 9 MB of records: long enough a run (most of a second) for rich to
    estimate a speed, so a time left, from several updates."""
    pool = tmp_path / "p.jsonl"
    pool.write_text("".join(f'{{"key": "{i}", "alt": "x"}}\n' for i in range(300_000)))
    return pool, f"/{os.path.getsize(pool) / 1e6:.1f} MB".encode()


def test_progress_of_files_shows_done_of_total_and_the_time_left(tmp_path):
    pool, total = _big_pool(tmp_path)
    seen = _on_a_terminal("mix", pool, "-o", tmp_path / "o.jsonl")
    assert total in seen  # "5.9/8.9 MB"
    assert re.search(ETA, seen)
    assert b"it/s" not in seen  # the spinner's speed is for an unknown total only
    assert b"vecap mix: in 300,000 = out 300,000" in seen


def test_progress_of_a_pipe_stays_a_count(tmp_path):
    pool, total = _big_pool(tmp_path)
    seen = _on_a_terminal("mix", f"pipe:cat {pool}", "-o", tmp_path / "o.jsonl")
    assert b" in \xc2\xb7 " in seen and b"it/s" in seen
    assert total not in seen and b"ETA" not in seen
    assert b"vecap mix: in 300,000 = out 300,000" in seen


def test_progress_with_workers_is_one_bar_with_the_total(tmp_path):
    pool, total = _big_pool(tmp_path)
    seen = _on_a_terminal("mix", pool, "--workers", "2", "-o", tmp_path / "o.jsonl")
    done = [float(d) for d in re.findall(rb"(\d+\.\d)" + re.escape(total), seen)]
    assert done and max(done) > 0 and b"ETA" in seen  # the reading here moves it
    two_lines = rb" in \xc2\xb7 [^\r]*\n[^\r]* in \xc2\xb7 "  # a frame of two bars
    assert re.search(two_lines, seen) is None  # one bar, fed here: no worker draws its own
    assert b"vecap mix: in 300,000 = out 300,000" in seen


def test_a_command_offers_the_shared_flags_it_uses_and_no_other():
    """--seed where a command draws at random; --workers where its stage runs in worker
    processes; caption and rewrite draw their --n samples, curate count neither draws nor
    opens images."""
    import typer

    from vecap_cli.cli.app import app

    root = typer.main.get_command(app)

    def flags(*path):
        command = root
        for name in path:
            command = command.get_command(None, name)
        return {param.name for param in command.params}

    assert {"seed", "n", "temperature"} <= flags("caption") & flags("rewrite")
    assert {"workers", "decode_threads"} <= flags("caption") and "workers" in flags("rewrite")
    for path in [("mix",), ("curate", "run"), ("curate", "balance")]:
        assert {"seed", "workers", "max_pixels"} <= flags(*path), path
    assert "seed" not in flags("curate", "count") and "max_pixels" not in flags("curate", "count")
    assert "seed" in flags("train") and "workers" in flags("train")  # train's: data loaders
