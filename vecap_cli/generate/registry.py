"""Generation backends by name: the one place a backend's name is written.

A backend registers a `Backend` for each command it serves, caption or rewrite:
how to build it, what to check before any record is read, its default batch
and its line in `--backend`'s help. The CLI lists its choices and help from
here each time it runs, and the steps build through here, so adding a backend
is one module and one `register` call (vecap_cli/generate/backends.py holds the
built-in ones). Light: the CLI imports this at start-up.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from vecap_cli.errors import VecapError
from vecap_cli.generate.base import decode_rgb
from vecap_cli.stream.images import DEFAULT_LIMITS, ImageLimits

CAPTION, REWRITE = "caption", "rewrite"


@dataclass(frozen=True)
class ModelOptions:
    """How a model runs, local or served: the flags caption and rewrite share."""

    device: str = "auto"
    trust_remote_code: bool = False
    api_base: str = "http://127.0.0.1:8000/v1"
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = 16  # requests in flight
    retries: int = 5
    timeout: float = 120.0  # seconds for one whole request
    max_reply_bytes: int = 1 << 20  # a chat completion of 77 tokens is ~1 KB
    cache: str | None = None  # a directory of answers already paid for (generate/cache.py)


@dataclass(frozen=True)
class Request:
    """What a command asks of a backend: which model, how long an answer, how it runs."""

    model: str
    max_new_tokens: int
    options: ModelOptions = field(default_factory=ModelOptions)
    prompt: str = ""  # captioners: the instruction beside each image
    pretrained: str | None = None  # openclip: a tag or checkpoint for `model`
    limits: ImageLimits = DEFAULT_LIMITS  # captioners: what `prepare` decodes
    # 0: greedy; above: sampled, `generate(batch, seeds=[one per item])` (--n, --temperature)
    temperature: float = 0.0


def _nothing_to_check(request: Request) -> None:
    """A backend with nothing to check before it loads."""


@dataclass(frozen=True)
class Backend:
    """`--backend NAME` of one command.

    `build` returns the model: for caption, `generate(prepared images) ->
    list[str | Failed]`; for rewrite, `generate(conversations)` likewise, or,
    for a backend that needs no model, a fuser of (alt, vec) pairs whose output
    is a caption by construction. With `Request.temperature` above 0, a model
    samples: `generate(batch, seeds=...)`, one seed per item, each item's answer
    fixed by its seed. It runs when a batch first needs the model,
    so heavy imports belong inside it; `check` runs at once, without loading.
    """

    name: str
    serves: str  # CAPTION or REWRITE
    build: Callable[[Request], object]
    help: str  # its line in --backend's help
    model_help: str = ""  # what --model names for it
    check: Callable[[Request], None] = _nothing_to_check
    batch_size: int | None = None  # records per generate call; None: 2 x --concurrency (a server)
    # captioners: image bytes -> model input, within the limits, in the decode workers
    prepare: Callable[[bytes, ImageLimits], object] = decode_rgb
    needs_model: bool = True
    # a built model stays in the process for the next run asking for the same
    # (generate/load.kept); False for a client of a server, which is cheap to build
    reuse: bool = True
    # Runs its model in this process (torch): each --workers process loads a copy of
    # its own; on a GPU, N copies on one device, which is refused (`workers_refusal`).
    in_process: bool = False
    # captioners: reads a prompt, so takes a `Prompted` image (caption --condition-on)
    takes_prompt: bool = False

    def workers_refusal(self, workers: int, on_gpu: Callable[[], bool]) -> str | None:
        """Why `--workers N` cannot run this backend, or None. `on_gpu()`: whether
        the model would run on a GPU (--device as resolved); asked only when it matters."""
        if workers < 2 or not self.in_process or not on_gpu():
            return None
        return (
            f"--workers {workers}: --backend {self.name} would load its model in each of "
            f"{workers} processes on one GPU; run one task per GPU instead (vecap launch "
            f"--tasks N --gpus-per-task 1 -- {self.serves} ...), or --device cpu"
        )

    def default_batch_size(self, concurrency: int) -> int:
        """What one forward pass holds (local models), or enough requests to keep
        `concurrency` of them in flight (a server)."""
        return 2 * concurrency if self.batch_size is None else self.batch_size


_REGISTERED: dict[tuple[str, str], Backend] = {}


def register(backend: Backend) -> Backend:
    if backend.serves not in (CAPTION, REWRITE):
        raise ValueError(f"a backend serves {CAPTION} or {REWRITE}, not '{backend.serves}'")
    key = (backend.serves, backend.name)
    if key in _REGISTERED:
        raise ValueError(f"a {backend.serves} backend named '{backend.name}' is registered already")
    _REGISTERED[key] = backend
    return backend


def unregister(backend: Backend) -> None:
    del _REGISTERED[backend.serves, backend.name]


def get(serves: str, name: str) -> Backend:
    try:
        return _REGISTERED[serves, name]
    except KeyError:
        raise VecapError(f"unknown {serves} backend '{name}'") from None


def offered(serves: str) -> list[Backend]:
    """The backends of one command, as --help lists them: the model-free ones
    first (what runs without --model), then in the order they registered."""
    mine = [b for (role, _), b in _REGISTERED.items() if role == serves]
    return sorted(mine, key=lambda b: b.needs_model)
