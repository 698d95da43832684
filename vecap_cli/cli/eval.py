"""vecap eval: not built yet."""

from vecap_cli.cli.stub import not_built

register = not_built("eval", "Zero-shot classification and image-text retrieval.")
