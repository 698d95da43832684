"""A registered backend, checked now and built when first needed.

A model loads only when a batch first needs it (in the calling thread): a run
whose records all have their field already, an empty input, or a finished
`--resume` never pays for it. What can be checked without loading, is checked
at once, so a mistyped path fails before any record is read.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from functools import partial

from vecap_cli.generate.cache import Cached, Store
from vecap_cli.generate.registry import CAPTION, REWRITE, ModelOptions, Request, get
from vecap_cli.stream.images import DEFAULT_LIMITS, ImageLimits


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


def load(serves: str, name: str, request: Request) -> Lazy | Cached:
    """The backend `name` of caption or rewrite; a captioner's `prepare` decodes
    within `request.limits` (bytes and pixels). With `options.cache`, behind the
    answer cache, keyed by what decides an answer (generate/cache.py)."""
    backend = get(serves, name)
    backend.check(request)
    prepare = partial(backend.prepare, limits=request.limits) if serves == CAPTION else None
    model = Lazy(partial(backend.build, request), prepare)
    options = request.options
    if options.cache is None:
        return model
    r = request
    scope = (serves, name, r.model, r.pretrained, r.prompt, r.max_new_tokens)
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
