"""A placeholder for a command that is not built yet: exits 2 with one line."""

import sys

import typer


def not_built(name: str, summary: str):
    """A `register(app)` for a command module that is still a placeholder."""

    def command(args: list[str] | None = typer.Argument(None, hidden=True)) -> None:
        print(f"vecap {name}: not built yet in this version", file=sys.stderr)
        raise typer.Exit(2)

    command.__doc__ = f"{summary} (not built yet)"

    def register(app: typer.Typer) -> None:
        app.command(
            name,
            context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
            add_help_option=False,
        )(command)

    register.not_built = True  # type: ignore[attr-defined]
    return register
