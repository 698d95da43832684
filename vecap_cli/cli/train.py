"""vecap train: not built yet."""

from vecap_cli.cli.stub import not_built

register = not_built("train", "Train CLIP, SigLIP or CoCa models on the fused kernels.")
