"""vecap curate: not built yet."""

from vecap_cli.cli.stub import not_built

register = not_built("curate", "MetaCLIP curation: metadata substring matching and balancing.")
