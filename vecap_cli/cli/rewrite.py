"""vecap rewrite: not built yet."""

from vecap_cli.cli.stub import not_built

register = not_built(
    "rewrite", "Fuse AltText and VeC into one caption (VeCap) with an LLM or rules."
)
