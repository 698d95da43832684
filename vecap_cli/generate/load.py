"""Backends by name, built when first needed.

A model loads only when a batch first needs it (in the calling thread): a run
whose records all have their field already, an empty input, or a finished
`--resume` never pays for it. What can be checked without loading, is checked
at once, so a mistyped path fails before any record is read.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

from vecap_cli.errors import VecapError
from vecap_cli.generate.base import decode_rgb
from vecap_cli.stream.images import DEFAULT_LIMITS, ImageLimits

if TYPE_CHECKING:  # the HTTP client loads only for --backend openai
    from vecap_cli.generate.openai_client import ServerSpec

CAPTION_BACKENDS = ("hf", "openclip", "openai")
CHAT_BACKENDS = ("hf", "openai")


class Lazy:
    """`generate` builds the backend on first call; `prepare` needs no model (decode workers)."""

    def __init__(
        self, build: Callable[[], object], prepare: Callable[[bytes], object] | None = None
    ):
        self._build = build
        self._backend: object | None = None
        self._lock = threading.Lock()
        if prepare is not None:
            self.prepare = prepare

    @property
    def backend(self):
        with self._lock:
            if self._backend is None:
                self._backend = self._build()
        return self._backend

    def generate(self, batch: list) -> list:
        return self.backend.generate(batch)  # type: ignore[attr-defined]


def _looks_local(model: str) -> bool:
    return model.startswith(("/", "./", "../", "~")) or os.path.exists(model)


def check_hf_dir(model: str) -> None:
    """A local transformers model dir must exist and hold config.json; hub ids load later."""
    if not model:
        raise VecapError("--model is required")
    if not _looks_local(model):
        return
    path = os.path.expanduser(model)
    if not os.path.isdir(path):
        raise VecapError(f"cannot load model '{model}': no such directory")
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise VecapError(f"cannot load model '{model}': no config.json in it")


def check_openclip(model: str, pretrained: str | None) -> None:
    if not model:
        raise VecapError("--model is required")
    if model.startswith("local-dir:"):
        path = os.path.expanduser(model[len("local-dir:") :])
        if not os.path.isfile(os.path.join(path, "open_clip_config.json")):
            raise VecapError(f"cannot load model '{model}': no open_clip_config.json in '{path}'")
    if pretrained and model.startswith(("local-dir:", "hf-hub:")):
        # open_clip would ignore --pretrained here, with a log line nobody sees
        raise VecapError(
            f"--pretrained cannot go with --model '{model}': its weights come from there"
        )
    if pretrained and _looks_local(pretrained) and not os.path.isfile(pretrained):
        raise VecapError(f"cannot read --pretrained '{pretrained}': no such file")


def captioner(
    backend: str,
    model: str,
    prompt: str,
    max_new_tokens: int,
    *,
    device: str = "auto",
    pretrained: str | None = None,
    server: ServerSpec | None = None,
    trust_remote_code: bool = False,
    limits: ImageLimits = DEFAULT_LIMITS,
) -> Lazy:
    """The captioner, its `prepare` decoding within `limits` (bytes and pixels)."""
    if backend == "hf":
        check_hf_dir(model)

        def build_hf():
            from vecap_cli.generate.hf_vlm import HFCaptioner

            return HFCaptioner(model, prompt, max_new_tokens, device, trust_remote_code)

        return Lazy(build_hf, partial(decode_rgb, limits=limits))
    if backend == "openclip":
        check_openclip(model, pretrained)

        def build_coca():
            from vecap_cli.generate.openclip_coca import CocaCaptioner

            return CocaCaptioner(model, pretrained, max_new_tokens, device)

        return Lazy(build_coca, partial(decode_rgb, limits=limits))
    if backend == "openai":
        from vecap_cli.generate.openai_client import OpenAICaptioner, data_url

        assert server is not None
        client = OpenAICaptioner(server, prompt)  # checks the URL now; connects on first use
        return Lazy(lambda: client, partial(data_url, limits=limits))
    raise VecapError(f"unknown caption backend '{backend}'")


def chat_model(
    backend: str,
    model: str,
    max_new_tokens: int,
    *,
    device: str = "auto",
    server: ServerSpec | None = None,
    trust_remote_code: bool = False,
) -> Lazy:
    if backend == "hf":
        check_hf_dir(model)

        def build_hf():
            from vecap_cli.generate.hf_lm import HFChat

            return HFChat(model, max_new_tokens, device, trust_remote_code)

        return Lazy(build_hf)
    if backend == "openai":
        from vecap_cli.generate.openai_client import OpenAIChat

        assert server is not None
        client = OpenAIChat(server)
        return Lazy(lambda: client)
    raise VecapError(f"unknown rewrite backend '{backend}'")
