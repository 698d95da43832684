"""Flags that `vecap caption` and `vecap rewrite` share: the model and how it runs."""

from typing import Annotated

import typer

from vecap_cli.cli.options import finite

_MODEL = "Model"
_SERVER = "OpenAI-compatible server (--backend openai)"

Device = Annotated[
    str,
    typer.Option(
        help="auto (a GPU when one is visible, bf16), cpu, cuda or cuda:N.", rich_help_panel=_MODEL
    ),
]
MaxNewTokens = Annotated[
    int, typer.Option(min=1, help="Most tokens generated per record.", rich_help_panel=_MODEL)
]
BatchSize = Annotated[
    int | None,
    typer.Option(
        min=1,
        help="Records per generate call (default: 8 for hf, 16 for openclip, "
        "2 x --concurrency for openai, 512 for rules).",
        rich_help_panel=_MODEL,
        show_default=False,
    ),
]
TrustRemoteCode = Annotated[
    bool,
    typer.Option(
        "--trust-remote-code",
        help="Let transformers run the model repository's own code (off: only built-in classes).",
        rich_help_panel=_MODEL,
    ),
]


def _check_api_base(value: str) -> str:
    """An unparsable or non-http(s) URL is a usage error, shown without its credentials."""
    from vecap_cli.generate.endpoint import check

    try:
        check(value)
    except ValueError as err:
        raise typer.BadParameter(str(err)) from None
    return value


ApiBase = Annotated[
    str,
    typer.Option(
        metavar="URL",
        callback=_check_api_base,
        help="Base URL of the server, up to /v1 (vLLM: vllm serve MODEL; SGLang likewise). "
        "http:// or https://; a user:password@ in it is sent as basic auth and never shown.",
        rich_help_panel=_SERVER,
    ),
]
ApiKeyEnv = Annotated[
    str,
    typer.Option(
        metavar="NAME",
        help="Environment variable holding the API key (unset: no key is sent).",
        rich_help_panel=_SERVER,
    ),
]
Concurrency = Annotated[
    int, typer.Option(min=1, help="Requests in flight at once.", rich_help_panel=_SERVER)
]
Retries = Annotated[
    int,
    typer.Option(
        min=0,
        help="Retries of a request after 429, 5xx, a timeout or a dropped connection, "
        "with exponential backoff.",
        rich_help_panel=_SERVER,
    ),
]
Timeout = Annotated[
    float,
    typer.Option(
        min=0.1,
        callback=finite,
        help="Seconds for one whole request, from connecting to the last byte of the answer "
        "(not per read: a server that trickles bytes times out too); retried like a "
        "dropped connection.",
        rich_help_panel=_SERVER,
    ),
]
MaxReplyBytes = Annotated[
    int,
    typer.Option(
        min=1024,
        metavar="BYTES",
        help="Largest reply body read; a longer one is given up, not retried: "
        "rejected as caption-reply-too-large, or VeCap = VeC (fallback-reply-too-large).",
        rich_help_panel=_SERVER,
    ),
]
DEFAULT_MAX_REPLY_BYTES = 1 << 20

DEFAULT_API_BASE = "http://127.0.0.1:8000/v1"


def server_spec(
    model: str,
    max_new_tokens: int,
    api_base: str,
    api_key_env: str,
    concurrency: int,
    retries: int,
    timeout: float,
    max_reply_bytes: int = DEFAULT_MAX_REPLY_BYTES,
):
    from vecap_cli.generate.openai_client import ServerSpec

    return ServerSpec(
        base_url=api_base,
        model=model,
        max_new_tokens=max_new_tokens,
        api_key_env=api_key_env,
        concurrency=concurrency,
        retries=retries,
        timeout=timeout,
        max_reply_bytes=max_reply_bytes,
    )
