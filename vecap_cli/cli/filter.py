"""vecap filter: model-based filtering and deduplication (a minimal group, for dedup)."""

import typer

from vecap_cli.cli import filter_dedup

SUMMARY = "Filter images: deduplicate (exact, pHash, SemDeDup)."

filter_app = typer.Typer(
    no_args_is_help=True,
    help=f"{SUMMARY}\n\nSee `vecap filter COMMAND --help` for each command's flags.",
)
filter_dedup.register(filter_app)


def register(app: typer.Typer) -> None:
    app.add_typer(filter_app, name="filter", short_help=SUMMARY)
