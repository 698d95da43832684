"""Man pages generated from the CLI itself: `python -m vecap_cli.cli.manpages man/`.

click-man's roff writer does the formatting; we walk typer's command tree (typer
vendors its own click, which click-man's walker does not recognise). A page's
date is kept when nothing else in it changed, so regenerating is a no-op.
"""

import os
import re
import sys
from datetime import date as date_type

import typer
from click_man.man import ManPage

from vecap_cli import __version__
from vecap_cli.cli.app import app


def _roff(text: str) -> str:
    text = text.replace("\\", "\\e")
    return re.sub(r"^([.'])", r"\\&\1", text, flags=re.M)


def _short(command) -> str:
    return command.short_help or (command.help or "").strip().split("\n")[0]


def pages(command=None, ctx=None, name="vecap") -> dict[str, str]:
    """{file name: roff text} for `command` and every visible subcommand."""
    command = command or typer.main.get_command(app)
    ctx = command.context_class(command, info_name=name, parent=ctx)
    page = ManPage(ctx.command_path)
    page.version = __version__
    page.date = "DATE"
    page.short_help = _roff(_short(command))
    page.description = _roff(command.help or "")
    page.synopsis = " ".join(command.collect_usage_pieces(ctx))
    page.options = [
        tuple(_roff(part) for part in record)
        for param in command.params
        if getattr(param, "param_type_name", "") == "option"
        and not param.hidden
        and (record := param.get_help_record(ctx))
    ]
    names = command.list_commands(ctx) if hasattr(command, "list_commands") else []
    subcommands = {n: c for n in names if not (c := command.get_command(ctx, n)).hidden}
    page.commands = [(n, _roff(_short(c))) for n, c in subcommands.items()]
    # click-man names a subcommand's page "PATH-NAME(1)", keeping the spaces of a
    # nested path ("vecap curate-run(1)"); the files are dashed throughout.
    path = ctx.command_path
    text = str(page).replace(f"\\fB{path}-", f"\\fB{path.replace(' ', '-')}-")
    out = {path.replace(" ", "-") + ".1": text}
    for sub_name, sub in subcommands.items():
        out.update(pages(sub, ctx, sub_name))
    return out


def write(directory: str) -> list[str]:
    """Write the pages; returns the names that changed."""
    os.makedirs(directory, exist_ok=True)
    changed = []
    for fname, text in pages().items():
        path = os.path.join(directory, fname)
        old = open(path).read() if os.path.exists(path) else ""
        date = re.search(r'^\.TH "[^"]*" "1" "([^"]*)"', old, flags=re.M)
        if date and old == text.replace('"DATE"', f'"{date.group(1)}"', 1):
            continue
        with open(path, "w") as f:
            f.write(text.replace('"DATE"', f'"{date_type.today().isoformat()}"', 1))
        changed.append(fname)
    return changed


if __name__ == "__main__":
    for name in write(sys.argv[1] if len(sys.argv) > 1 else "man"):
        print(f"wrote {name}")
