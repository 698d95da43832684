"""Language models from one GGUF file (llama.cpp's format), through transformers' own loader.

transformers rebuilds the config and the tokenizer from the file's metadata and
unpacks its tensors (f32, f16, q8_0, k-quants...) into a plain model, which then
runs like any other. It reads text-only language models (llama, qwen2, gemma,
phi3...): llama.cpp keeps a vision tower in a separate mmproj file, which
transformers does not read, so a captioner is never a GGUF.

`check` reads only the header (the gguf package, no torch), so a wrong file fails
before any record is read; `loading` gives from_pretrained the folder and the
file's name, from this disk only.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Iterator
from importlib.util import find_spec

from vecap_cli.errors import VecapError, first_line

MAGIC = b"GGUF"  # a GGUF file's first four bytes
NOT_A_VLM = (
    "a file, where a transformers model dir is needed (transformers reads only text-only "
    "language models from GGUF files, no vision-language ones)"
)
# transformers' GGUF loading needs both; neither is one of its own dependencies
PACKAGES = ("gguf", "accelerate")


def is_file(model: str) -> bool:
    """`--model` names a local file, not a model dir: vecap reads a file as GGUF."""
    return os.path.isfile(os.path.expanduser(model))


def named(model: str) -> bool:
    """`--model` looks like a GGUF file by its name, whether or not it is there."""
    return model.lower().endswith(".gguf")


def check(model: str) -> None:
    """A readable GGUF file whose header parses, with what transformers needs to load it."""
    path = os.path.expanduser(model)
    if not os.path.isfile(path):
        raise VecapError(f"cannot load model '{model}': no such file")
    try:
        with open(path, "rb") as f:
            magic = f.read(len(MAGIC))
    except OSError as err:
        raise VecapError(f"cannot load model '{model}': {err.strerror}") from None
    if magic != MAGIC:
        raise VecapError(
            f"cannot load model '{model}': not a GGUF file (a transformers model is a directory)"
        )
    missing = [name for name in PACKAGES if find_spec(name) is None]
    if missing:
        raise VecapError(
            f"cannot load model '{model}': a GGUF file needs the "
            f"{' and '.join(missing)} package{'s' if len(missing) > 1 else ''} "
            f"(pip install {' '.join(missing)})"
        )
    architecture(model)


def architecture(model: str) -> str:
    """The file's `general.architecture`; one line for a truncated or damaged file."""
    from gguf import GGUFReader

    try:
        # The reader maps the file and lays out every tensor it lists: one cut short
        # fails here, not after a model of random weights half loads.
        reader = GGUFReader(os.path.expanduser(model), "r")
        return str(reader.fields["general.architecture"].contents())
    except Exception as err:  # a damaged header: numpy's and the reader's errors alike
        why = first_line(err)
        raise VecapError(
            f"cannot load model '{model}': a truncated or damaged GGUF file ({why})"
        ) from None


def loading(model: str) -> tuple[str, dict, dict]:
    """from_pretrained's (folder, tokenizer kwargs, model kwargs) for a GGUF file."""
    path = os.path.abspath(os.path.expanduser(model))
    where = {"gguf_file": os.path.basename(path), "local_files_only": True}
    model_kwargs = dict(where)
    try:
        from transformers import GgufConfig
    except ImportError:  # transformers before 5: GGUF weights are always unpacked
        pass
    else:
        # Unpacked now, as older transformers always did: keeping them packed would
        # fetch a matmul kernel from the hub at load time.
        model_kwargs["quantization_config"] = GgufConfig(dequantize=True)
    return os.path.dirname(path), where, model_kwargs


@contextlib.contextmanager
def quiet_unpacking() -> Iterator[None]:
    """transformers' GGUF reader draws a tqdm bar of its own on stderr, which its
    progress-bar switch does not reach; stderr carries vecap's summary."""
    with contextlib.redirect_stderr(io.StringIO()):
        yield
