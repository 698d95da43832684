"""`vecap`: the entry point. Each command lives in its own module, imported here
for its signature only; heavy libraries load inside the command when it runs."""

import importlib
import sys

import typer
from typer.core import TyperGroup

from vecap_cli import __version__
from vecap_cli.errors import VecapError


class _LazyCommands(TyperGroup):
    """The commands in pipeline order (COMMANDS), each module imported when its
    command is named: `vecap mix` loads mix's flags, not launch's or train's.
    `vecap --help` and the man pages name them all, and so load them all."""

    def list_commands(self, ctx) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx, name: str):
        if name not in self.commands and name in COMMANDS:
            self.commands[name] = _load(name)
        return self.commands.get(name)


def _load(name: str):
    """The click command of `vecap NAME`, from its module's `register(app)`."""
    holder = typer.Typer(add_completion=False)
    importlib.import_module(f"vecap_cli.cli.{name}").register(holder)
    command = typer.main.get_command(holder)
    # one command comes back as itself; a command group, inside a group that holds it
    return getattr(command, "commands", {}).get(name, command)


app = typer.Typer(
    name="vecap",
    cls=_LazyCommands,
    help="VeCLIP-style data and training tools: curate → filter → caption → rewrite → embed → mix → train "
    "→ eval; "
    "launch runs the record commands on a cluster.\n\n"
    "Each command reads and writes JSONL or webdataset tar streams, so they pipe together.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

# Each command module has `register(app)`, called when the command is named (see
# _LazyCommands); its heavy imports wait until it runs.
COMMANDS = ("curate", "filter", "caption", "rewrite", "embed", "mix", "train", "eval", "launch")


def _version(value: bool) -> None:
    if value:
        print(f"vecap {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version."
    ),
) -> None:
    pass


def _step(argv: list[str]) -> str:
    return next((a for a in argv if not a.startswith("-")), "")


def main(argv: list[str] | None = None) -> None:
    """Run the CLI. Exit codes: 0 ok, 1 failure, 2 usage, 130 interrupted.

    A reader that leaves early (`| head`) ends the run quietly with 1: click turns
    the EPIPE into that. SIGPIPE stays ignored, so a closed socket is an error, not a kill.

    Typer reports bad flags (exit 2) and interrupts (130); a structural failure
    inside a command is a VecapError, printed here as one line, and so is an
    OSError no writer named (a full disk, a failing device): never a traceback.
    """
    argv = sys.argv[1:] if argv is None else argv
    try:
        app(args=argv, prog_name="vecap")
    except (VecapError, OSError) as err:
        if isinstance(err, OSError):
            where = f" '{err.filename}'" if err.filename else ""
            err = VecapError(f"{err.strerror or err}{where}")
        step = _step(argv)
        print(f"vecap {step}: error: {err}" if step else f"vecap: error: {err}", file=sys.stderr)
        sys.exit(1)
