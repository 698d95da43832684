"""Loading models and weights: vecap's built-in open_clip configs, which train,
eval and caption all accept by name, and one line for weights that do not load
(files anyone may have written)."""

from __future__ import annotations

import logging
import pickle
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from vecap_cli.errors import VecapError, first_line

# open_clip JSON configs of the tiny vecap-* models (train/model_configs/)
CONFIG_DIR = Path(__file__).with_name("train") / "model_configs"
BUILTIN = tuple(sorted(p.stem for p in CONFIG_DIR.glob("*.json")))


def register_builtin_configs() -> tuple[str, ...]:
    """Make the vecap-* architectures known to open_clip (idempotent)."""
    import open_clip

    if any(open_clip.get_model_config(name) is None for name in BUILTIN):
        open_clip.add_model_config(CONFIG_DIR)
    return BUILTIN


@contextmanager
def quietly() -> Iterator[None]:
    """Silence what loaders say on their own: open_clip's root-logger warnings
    (random weights, ...) and torch's warnings about foreign pickles. vecap says
    its own one line, success or failure."""
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(logging.NOTSET)


def load_error(what: str, err: BaseException) -> VecapError:
    """The one line for weights that did not load: `what` names the file and the model."""
    if isinstance(err, pickle.UnpicklingError):
        # torch's own text advises weights_only=False, which vecap never does
        why = "not a plain-weights checkpoint (it holds pickled objects or code, refused)"
    else:
        why = first_line(err)
    return VecapError(f"{what}: {why}")
