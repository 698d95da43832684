"""A registered backend, checked now and built when first needed.

A model loads only when a batch first needs it (in the calling thread): a run
whose records all have their field already, an empty input, or a finished
`--resume` never pays for it. What can be checked without loading, is checked
at once, so a mistyped path fails before any record is read.

A process that runs several commands in turn (a Ray actor of `vecap launch
--engine ray`, one task after another) calls `keep_models()` first: a local
model, once built, then stays for the next run that asks for the same one
(`kept`), so the process loads it once. A process of one command has no use
for it and does not keep what it built.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable
from functools import partial

from vecap_cli.errors import VecapError
from vecap_cli.generate.cache import Cached, Store
from vecap_cli.generate.registry import (
    CAPTION,
    REWRITE,
    Backend,
    ModelOptions,
    Request,
    get,
)
from vecap_cli.stream.images import DEFAULT_LIMITS, ImageLimits


class Lazy:
    """`generate` builds the backend on first call; `prepare` needs no model (decode workers)."""

    def __init__(
        self,
        build: Callable[[], object],
        prepare: Callable[[bytes], object] | None = None,
        name: str = "",
    ):
        self._build, self.name = build, name
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

    def generate(self, batch: list, seeds: list[int] | None = None) -> list:
        backend = self.backend
        if seeds is None:  # a backend that never samples need not take seeds
            return backend.generate(batch)  # type: ignore[attr-defined]
        if "seeds" not in inspect.signature(backend.generate).parameters:  # type: ignore[attr-defined]
            raise VecapError(f"--backend {self.name} does not sample: it takes no --temperature")
        return backend.generate(batch, seeds=seeds)  # type: ignore[attr-defined]


# With keep_models(): the model built last in this process, by what it was built
# from. One slot: a process runs one model at a time, and a GPU holds one; a
# second would double the memory for a run that no longer needs the first.
_keeping = False
_kept: tuple[tuple[Backend, Request], object] | None = None
_kept_lock = threading.Lock()


def keep_models() -> None:
    """From now on, this process keeps the model it built last for the next run."""
    global _keeping
    _keeping = True


def kept(backend: Backend, request: Request) -> object:
    """`backend.build(request)`; after keep_models(), the model an earlier run in
    this process built from the same backend and request (model, pretrained,
    prompt, device, trust_remote_code...: all of it, whatever a build reads). A
    server client (`Backend.reuse` False) is built anew: it is cheap, and its API
    key is read from the environment when it is built."""
    global _kept
    if not (_keeping and backend.reuse):
        return backend.build(request)
    key = (backend, request)
    with _kept_lock:
        if _kept is None or _kept[0] != key:
            _kept = None  # the last model is freed before the next one loads
            _kept = (key, backend.build(request))
        return _kept[1]


def load(serves: str, name: str, request: Request) -> Lazy | Cached:
    """The backend `name` of caption or rewrite; a captioner's `prepare` decodes
    within `request.limits` (bytes and pixels). With `options.cache`, behind the
    answer cache, keyed by what decides an answer (generate/cache.py): sampled, the
    temperature too, and each answer's seed."""
    backend = get(serves, name)
    backend.check(request)
    prepare = partial(backend.prepare, limits=request.limits) if serves == CAPTION else None
    model = Lazy(partial(kept, backend, request), prepare, name)
    options = request.options
    if options.cache is None:
        return model
    r = request
    scope = (serves, name, r.model, r.pretrained, r.prompt, r.max_new_tokens)
    if r.temperature > 0:  # greedy answers keep the keys they always had
        scope = (*scope, ("temperature", r.temperature))
    return Cached(model, Store(options.cache, max_chars=options.max_reply_bytes), scope)


def captioner(
    backend: str,
    model: str,
    prompt: str,
    max_new_tokens: int,
    *,
    pretrained: str | None = None,
    limits: ImageLimits = DEFAULT_LIMITS,
    **options,
) -> Lazy:
    """A captioner by name; `options`: ModelOptions' fields (device=..., api_base=...)."""
    request = Request(
        model,
        max_new_tokens,
        ModelOptions(**options),
        prompt=prompt,
        pretrained=pretrained,
        limits=limits,
    )
    return load(CAPTION, backend, request)


def chat_model(backend: str, model: str, max_new_tokens: int, **options) -> Lazy:
    """A chat model by name; `options`: ModelOptions' fields."""
    return load(REWRITE, backend, Request(model, max_new_tokens, ModelOptions(**options)))
