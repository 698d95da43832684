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


def test_progress_shows_on_a_terminal_and_not_in_logs(tmp_path):
    import os
    import pty

    pool = tmp_path / "p.jsonl"
    pool.write_text("".join(f'{{"key": "{i}", "alt": "x"}}\n' for i in range(50_000)))
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "vecap_cli", "mix", str(pool), "-o", str(tmp_path / "o.jsonl")],
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
    assert proc.wait() == 0
    assert b" in \xc2\xb7 " in seen  # the live count: "N in · M out"
    assert b"vecap mix: in 50,000 = out 50,000" in seen
    logged = run_vecap("mix", pool, "-o", tmp_path / "o2.jsonl")
    assert logged.err.strip().splitlines() == [logged.err.strip()]  # the summary line only
