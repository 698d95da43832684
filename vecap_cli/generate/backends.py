"""The built-in generation backends, registered when `vecap_cli.generate` is imported.

hf: transformers models on this machine (hf_vlm for caption, hf_lm for rewrite,
from a model dir or, the language models, from a GGUF file: gguf_file);
openclip: an open_clip CoCa (openclip_coca); openai: any OpenAI-compatible
server, vLLM or SGLang (openai_client). Each model class, and torch,
transformers, open_clip or httpx with it, is imported only in `build`.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from vecap_cli.errors import VecapError
from vecap_cli.generate import endpoint, gguf_file
from vecap_cli.generate.registry import CAPTION, REWRITE, Backend, Request, register
from vecap_cli.stream.images import ImageLimits

if TYPE_CHECKING:
    from vecap_cli.generate.openai_client import ServerSpec


def _looks_local(model: str) -> bool:
    return model.startswith(("/", "./", "../", "~")) or os.path.exists(model)


def check_hf_dir(model: str, *, gguf: bool = False) -> None:
    """A local transformers model dir must exist and hold config.json; hub ids load
    later. A local file is a GGUF (a language model) where `gguf`, refused otherwise."""
    if not model:
        raise VecapError("--model is required")
    if gguf_file.named(model) or gguf_file.is_file(model):
        if not gguf:
            raise VecapError(f"cannot load model '{model}': {gguf_file.NOT_A_VLM}")
        gguf_file.check(model)
        return
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


def check_server(request: Request) -> None:
    """The URL parses as http(s), shown without its credentials; the server is met on first use."""
    try:
        endpoint.check(request.options.api_base)
    except ValueError as err:
        raise VecapError(f"--api-base {err}") from None


def server_spec(request: Request) -> ServerSpec:
    from vecap_cli.generate.openai_client import ServerSpec

    options = request.options
    return ServerSpec(
        base_url=options.api_base,
        model=request.model,
        max_new_tokens=request.max_new_tokens,
        api_key_env=options.api_key_env,
        concurrency=options.concurrency,
        retries=options.retries,
        timeout=options.timeout,
        max_reply_bytes=options.max_reply_bytes,
        temperature=request.temperature,
    )


def _hf_captioner(request: Request):
    from vecap_cli.generate.hf_vlm import HFCaptioner

    options = request.options
    return HFCaptioner(
        request.model,
        request.prompt,
        request.max_new_tokens,
        options.device,
        options.trust_remote_code,
        request.temperature,
    )


def _hf_chat(request: Request):
    from vecap_cli.generate.hf_lm import HFChat

    options = request.options
    return HFChat(
        request.model,
        request.max_new_tokens,
        options.device,
        options.trust_remote_code,
        request.temperature,
    )


def _coca(request: Request):
    from vecap_cli.generate.openclip_coca import CocaCaptioner

    return CocaCaptioner(
        request.model,
        request.pretrained,
        request.max_new_tokens,
        request.options.device,
        request.temperature,
    )


def _openai_captioner(request: Request):
    from vecap_cli.generate.openai_client import OpenAICaptioner

    return OpenAICaptioner(server_spec(request), request.prompt)


def _openai_chat(request: Request):
    from vecap_cli.generate.openai_client import OpenAIChat

    return OpenAIChat(server_spec(request))


def _data_url(data: bytes, limits: ImageLimits) -> str:
    """The image inline, for the request body (the HTTP client loads with it)."""
    from vecap_cli.generate.openai_client import data_url

    return data_url(data, limits)


def _check_hf_vlm(request: Request) -> None:
    check_hf_dir(request.model)


def _check_hf_lm(request: Request) -> None:
    check_hf_dir(request.model, gguf=True)


def _check_openclip(request: Request) -> None:
    check_openclip(request.model, request.pretrained)


_HF = {"batch_size": 8, "in_process": True}
_SERVER = {  # batch: 2 x concurrency; the client is built anew each run (reads the API key)
    "model_help": "the served model name",
    "check": check_server,
    "reuse": False,
}

register(
    Backend(
        "hf",
        CAPTION,
        _hf_captioner,
        help="transformers image-text-to-text models (LLaVA, BLIP, BLIP-2, Qwen2-VL...)",
        model_help="a transformers model dir (or hub id)",
        check=_check_hf_vlm,
        takes_prompt=True,  # but BLIP, which follows no instruction (hf_vlm)
        **_HF,
    )
)
register(
    Backend(
        "hf",
        REWRITE,
        _hf_chat,
        help="a transformers causal LM (the default with --model)",
        model_help="a transformers model dir, a .gguf file or a hub id",
        check=_check_hf_lm,
        **_HF,
    )
)
register(
    Backend(
        "openclip",
        CAPTION,
        _coca,
        help="a CoCa checkpoint",
        model_help="an open_clip model name, hf-hub:ORG/REPO or local-dir:PATH",
        check=_check_openclip,
        batch_size=16,
        in_process=True,
    )
)
register(
    Backend(
        "openai",
        CAPTION,
        _openai_captioner,
        help="a chat-completions server",
        prepare=_data_url,
        takes_prompt=True,
        **_SERVER,
    )
)
register(Backend("openai", REWRITE, _openai_chat, help="a chat-completions server", **_SERVER))
