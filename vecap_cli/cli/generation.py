"""Flags that `vecap caption` and `vecap rewrite` share: the model and how it runs.

`@generation_command` declares them once for both commands. It adds the device
and server flags to the command's signature and hands their values over as one
`ModelOptions`; it adds INPUT... and the stream flags (`record_command`), --workers
and --seed (of the --n sampled draws) included; and it reads
--backend's choices, and the help that names backends (--backend, --model,
--batch-size), from the backend registry each time typer builds the command,
so that a backend registered after import, by a plugin or a test, is offered
like a built-in one.
"""

import functools
import inspect
from collections.abc import Callable
from copy import copy
from dataclasses import fields
from typing import Annotated, get_args

import typer

import vecap_cli.steps.generation  # noqa: F401 -- registers every built-in backend
from vecap_cli.cli.options import finite, one_of, record_command
from vecap_cli.generate.registry import Backend, ModelOptions, offered

MODEL = "Model"
_SERVER = "OpenAI-compatible server (--backend openai)"


def model_flag(help: str | None = None, **kwargs):
    """A flag of the Model panel."""
    return typer.Option(help=help, rich_help_panel=MODEL, **kwargs)


def overwrite_flag(verb: str, field: str):
    """--overwrite: the records that already have `field` are done again, not passed through."""
    return typer.Option("--overwrite", help=f"{verb} records that already have a `{field}` too.")


def by_style(styles: dict, value) -> str:
    default = value(styles["default"])
    others = ", ".join(f"{value(s)} for {name}" for name, s in styles.items() if name != "default")
    return f"{default}; {others}" if others else str(default)


def max_new_tokens_flag(styles: dict):
    """--max-new-tokens, its default given by --style (`styles`: name -> a preset)."""
    default = by_style(styles, lambda s: s.max_new_tokens)
    return model_flag(
        f"Most tokens generated per draw (default: {default}).", min=1, show_default=False
    )


def style_flag(styles: dict, what: str):
    """--style: a preset of `styles` (name -> a preset with `help`)."""
    listing = "; ".join(f"{name}: {s.help}" for name, s in styles.items())
    return model_flag(
        f"{what} preset: {listing}.", parser=one_of(styles), metavar=f"<{'|'.join(styles)}>"
    )


MAX_DRAWS = 64  # a record's draws sit in memory together; LaCLIP used 4 rewrites per image


def n_flag(field: str, what: str):
    return model_flag(
        f"{what} drawn per record: with 2 or more, `{field}` holds a JSON list of them "
        "(needs --temperature above 0). Draw i is seeded from (--seed, key, i): the same "
        "draws with any --workers or sharding, and any --batch-size but for float rounding "
        "in a differently padded batch (bf16 on a GPU, rarely).",
        min=1,
        max=MAX_DRAWS,
    )


Temperature = Annotated[
    float,
    model_flag(
        "Sampling temperature of each draw; 0: greedy decoding (one draw only).",
        min=0.0,
        callback=finite,
    ),
]
BatchSize = Annotated[int | None, model_flag(min=1, show_default=False)]  # help: _batch_help
Device = Annotated[str, model_flag("auto (a GPU when one is visible, bf16), cpu, cuda or cuda:N.")]
TrustRemoteCode = Annotated[
    bool,
    typer.Option(
        "--trust-remote-code",
        help="Let transformers run the model repository's own code (off: only built-in classes).",
        rich_help_panel=MODEL,
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
CacheDir = Annotated[
    str | None,
    model_flag(
        "Keep every model answer in DIR/answers.sqlite3, keyed by the backend, model, prompt, "
        "--max-new-tokens and the input (the image's bytes, the conversation sent), and a "
        "sampled one by its --temperature and seed (each of --n draws its own): a rerun "
        "or a resumed run asks the model only for answers not there (all there: it never "
        "loads). Shared safely by the processes of one machine; counted in --stats as "
        "cache hit/miss. A cache that cannot be opened or written is an error.",
        metavar="DIR",
        show_default=False,
    ),
]

# ModelOptions' fields as flags, in --help's order; their defaults are ModelOptions'.
_MODEL_FLAGS = {
    "device": Device,
    "trust_remote_code": TrustRemoteCode,
    "api_base": ApiBase,
    "api_key_env": ApiKeyEnv,
    "concurrency": Concurrency,
    "retries": Retries,
    "timeout": Timeout,
    "max_reply_bytes": MaxReplyBytes,
    "cache": CacheDir,
}


def _listing(backends: list[Backend], line: Callable[[Backend], str]) -> str:
    return "; ".join(f"{b.name}: {line(b)}" for b in backends if line(b)) + "."


def _batch_help(backends: list[Backend]) -> str:
    defaults = ", ".join(
        f"{'2 x --concurrency' if b.batch_size is None else b.batch_size} for {b.name}"
        for b in backends
    )
    return f"Records per generate call (default: {defaults})."


# The flags whose help lists the backends, and how.
_LISTS: dict[str, Callable[[list[Backend]], str]] = {
    "backend": lambda backends: _listing(backends, lambda b: b.help),
    "model": lambda backends: _listing(backends, lambda b: b.model_help),
    "batch_size": _batch_help,
}


def _listed(param: inspect.Parameter, backends: list[Backend]) -> inspect.Parameter:
    """`param` with its help, and --backend with its choices, naming `backends`."""
    listing = _LISTS.get(param.name)
    if listing is None:
        return param
    kind, option = get_args(param.annotation)
    option = copy(option)
    option.help = listing(backends)
    if param.name == "backend":  # checked here, not by typer's Literal: its error reads
        # "Value error, 'x' is not one of ...", a validator's prefix
        names = {b.name: b for b in backends}
        option.parser = one_of(names)
        option.metavar = f"<{'|'.join(names)}>"  # as typer writes a choice
    return param.replace(annotation=Annotated[kind, option])


class _LiveBackends:
    """The command as typer reads it, anew each time it builds the CLI (each run): its
    signature, with --backend's choices and the help that lists backends as registered then."""

    def __init__(self, command, serves: str):
        self.__wrapped__, self._serves = command, serves
        self.__name__, self.__doc__ = command.__name__, command.__doc__

    def __call__(self, **kwargs):
        return self.__wrapped__(**kwargs)

    @property
    def __signature__(self) -> inspect.Signature:
        signature = inspect.signature(self.__wrapped__)
        backends = offered(self._serves)
        return signature.replace(
            parameters=[_listed(p, backends) for p in signature.parameters.values()]
        )

    @property
    def __annotations__(self) -> dict:  # what typing.get_type_hints reads
        return {p.name: p.annotation for p in self.__signature__.parameters.values()}


def _with_model_options(fn):
    """`fn(..., options: ModelOptions)` as a function of ModelOptions' fields, one flag each."""
    defaults = {f.name: f.default for f in fields(ModelOptions)}
    own = [p for p in inspect.signature(fn).parameters.values() if p.name != "options"]
    flags = [
        inspect.Parameter(
            name, inspect.Parameter.KEYWORD_ONLY, annotation=flag, default=defaults[name]
        )
        for name, flag in _MODEL_FLAGS.items()
    ]

    @functools.wraps(fn)
    def command(**kwargs):
        options = ModelOptions(**{name: kwargs.pop(name) for name in _MODEL_FLAGS})
        return fn(**kwargs, options=options)

    command.__signature__ = inspect.Signature(own + flags)
    command.__annotations__ = {p.name: p.annotation for p in own + flags}
    return command


def config_fields(flags: dict) -> dict:
    """A command's own flags (its `locals()` on entry), each named as the config field
    it sets: all but the shared ModelOptions and StreamOptions."""
    return {name: value for name, value in flags.items() if name not in ("options", "opts")}


def generation_command(serves: str):
    """caption's and rewrite's `record_command`: see this module's docstring."""

    def decorate(fn):
        command = record_command(serves, workers=True)(_with_model_options(fn))
        return _LiveBackends(command, serves)

    return decorate
