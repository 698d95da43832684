"""`vecap`: the entry point. Each command lives in its own module, imported here
for its signature only; heavy libraries load inside the command when it runs."""

import signal
import sys

import typer

from vecap_cli import __version__
from vecap_cli.cli import mix
from vecap_cli.errors import VecapError

app = typer.Typer(
    name="vecap",
    help="VeCLIP-style data and training tools: curate → caption → rewrite → mix → train → eval.\n\n"
    "Each command reads and writes JSONL or webdataset tar streams, so they pipe together.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

_NOT_BUILT = {
    "curate": "MetaCLIP curation: metadata substring matching and balancing.",
    "caption": "Write visual-concept captions (VeC) with a vision-language model.",
    "rewrite": "Fuse AltText and VeC into one caption (VeCap) with an LLM or rules.",
}
_NOT_BUILT_AFTER = {
    "train": "Train CLIP, SigLIP or CoCa models on the fused kernels.",
    "eval": "Zero-shot classification and image-text retrieval.",
}


def _not_built(name: str, summary: str) -> None:
    def command(args: list[str] | None = typer.Argument(None, hidden=True)) -> None:
        print(f"vecap {name}: not built yet in this version", file=sys.stderr)
        raise typer.Exit(2)

    command.__doc__ = f"{summary} (not built yet)"
    app.command(
        name,
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
        add_help_option=False,
    )(command)


for _name, _summary in _NOT_BUILT.items():
    _not_built(_name, _summary)
app.command("mix")(mix.mix)
for _name, _summary in _NOT_BUILT_AFTER.items():
    _not_built(_name, _summary)


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

    Typer reports bad flags (exit 2) and interrupts (130); a structural failure
    inside a command is a VecapError, printed here as one line.
    """
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `vecap ... | head` ends quietly
    argv = sys.argv[1:] if argv is None else argv
    try:
        app(args=argv, prog_name="vecap")
    except VecapError as err:
        step = _step(argv)
        print(f"vecap {step}: error: {err}" if step else f"vecap: error: {err}", file=sys.stderr)
        sys.exit(1)
