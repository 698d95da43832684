"""Batched embedding: images decoded and preprocessed in threads ahead of the model.

PIL decodes and resizes with the GIL released, so a few threads keep the next
batch ready while the model runs on this one. Every sample without a label, or
whose image cannot be read or decoded, is rejected here, in input order.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, nullcontext

import torch
import torch.nn.functional as F

from vecap_cli.stream.images import DEFAULT_LIMITS, ImageLimits, ImageRejected, decode
from vecap_cli.stream.sample import Sample
from vecap_cli.stream.tally import Tally

# A sample with its label (captions or class index), or with None and (reason, detail)
# when it has no usable label: it is rejected in turn, so rejections keep input order.
Labelled = tuple[Sample, object, tuple[str, str] | None]


def load_image(
    sample: Sample, preprocess: Callable, limits: ImageLimits = DEFAULT_LIMITS
) -> tuple[torch.Tensor | None, str, str]:
    """(pixels, '', '') or (None, reason, detail) for an image that cannot be used."""
    try:
        image = decode(sample.image_bytes(limits), limits)
    except ImageRejected as err:
        return None, err.reason, str(err)
    return preprocess(image), "", ""


def image_batches(
    items: Iterable[Labelled],
    preprocess: Callable,
    batch_size: int,
    tally: Tally,
    workers: int = 4,
    limits: ImageLimits = DEFAULT_LIMITS,
) -> Iterator[tuple[torch.Tensor, list]]:
    """(pixels (B, 3, H, W), labels) batches of the decodable images, in input order."""
    pixels, labels = [], []
    decoded = _decoded(items, preprocess, tally, workers, 2 * batch_size, limits)
    for _, label, image in decoded:
        pixels.append(image)
        labels.append(label)
        if len(pixels) == batch_size:
            yield torch.stack(pixels), labels
            pixels, labels = [], []
    if pixels:
        yield torch.stack(pixels), labels


def _decoded(items, preprocess, tally: Tally, workers: int, lookahead: int, limits: ImageLimits):
    pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="vecap-decode")
    pending: deque[tuple[Sample, object, Future | tuple[str, str]]] = deque()
    try:
        for sample, label, problem in items:
            job = problem or pool.submit(load_image, sample, preprocess, limits)
            pending.append((sample, label, job))
            if len(pending) > lookahead:
                yield from _resolve(*pending.popleft(), tally)
        while pending:
            yield from _resolve(*pending.popleft(), tally)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _resolve(sample: Sample, label, job: Future | tuple[str, str], tally: Tally):
    image, reason, detail = (None, *job) if isinstance(job, tuple) else job.result()
    if image is None:
        tally.reject(reason, detail, sample)
        return
    tally.n_out += 1
    yield sample, label, image


@contextmanager
def eval_mode(model):
    """The model in eval mode (no dropout) for the duration, then back as it was:
    `vecap train` evaluates the model it is training."""
    training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(training)


class Encoder:
    """A model's two towers on a device: batched, under AMP on GPU, no autograd.

    `model` has open_clip's `encode_image(pixels)` and `encode_text(tokens)`;
    `tokenizer(list[str])` returns a token tensor or a mapping of tensors (HF).
    Both methods return L2-normalized float32 embeddings on the CPU.
    """

    def __init__(self, model, tokenizer, device: torch.device | str, amp: bool = True):
        from vecap_cli.eval.trim import trimmed_text_encoder

        self.model, self.tokenizer = model, tokenizer
        self.device = torch.device(device)
        self.amp = amp and self.device.type == "cuda"
        self.encode_text = trimmed_text_encoder(model) or model.encode_text

    def _autocast(self):
        if not self.amp:
            return nullcontext()
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)

    def images(self, pixels: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), self._autocast():
            features = self.model.encode_image(pixels.to(self.device, non_blocking=True))
        return F.normalize(features.float(), dim=-1).cpu()

    def texts(self, texts: list[str], batch_size: int) -> torch.Tensor:
        """(len(texts), D) embeddings, `batch_size` texts per forward pass."""
        out = []
        for start in range(0, len(texts), batch_size):
            tokens = _to(self.tokenizer(texts[start : start + batch_size]), self.device)
            with torch.inference_mode(), self._autocast():
                features = self.encode_text(tokens)
            out.append(F.normalize(features.float(), dim=-1).cpu())
        return torch.cat(out) if out else torch.empty(0, 0)


def _to(tokens, device: torch.device):
    if isinstance(tokens, Mapping):
        return {name: value.to(device) for name, value in tokens.items()}
    return tokens.to(device)
