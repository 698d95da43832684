"""vecap caption: not built yet."""

from vecap_cli.cli.stub import not_built

register = not_built("caption", "Write visual-concept captions (VeC) with a vision-language model.")
