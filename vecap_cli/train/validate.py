"""`--val DATA`: image-text retrieval on a held-out set while training.

A seam: `vecap eval` will own retrieval; until it lands, this small in-process
version (R@1/R@5 both ways, images deduplicated so that several captions of one
image all count as hits, as in COCO / Flickr30k retrieval) stands in for it.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vecap_cli.errors import VecapError
from vecap_cli.stream.runner import iter_samples
from vecap_cli.stream.sample import ImageMissing
from vecap_cli.stream.tally import Tally
from vecap_cli.train.data import DEFAULT_KEYS, BadImage, load_image


@dataclass
class ValSet:
    images: list[bytes]  # unique images, encoded; decoded batch by batch when used
    captions: list[str]
    text_to_image: torch.Tensor  # (n_texts,) index into `images`


def load_valset(inputs: Sequence[str], limit: int) -> ValSet:
    """The first `limit` captioned, decodable samples of `inputs`."""
    from vecap_cli.steps.mix import available

    images: list = []
    by_digest: dict[bytes, int] = {}
    captions: list[str] = []
    owners: list[int] = []
    for sample in iter_samples(inputs, Tally("val")):
        found = available(sample.record, DEFAULT_KEYS, first=True)
        if not found:
            continue
        try:
            data = sample.image_bytes()
            digest = hashlib.blake2b(data, digest_size=16).digest()
            if digest not in by_digest:
                load_image(sample)  # decodable, or skipped
                images.append(data)
                by_digest[digest] = len(images) - 1
        except (ImageMissing, BadImage):
            continue
        captions.append(found[0][1])
        owners.append(by_digest[digest])
        if len(captions) >= limit:
            break
    if not captions:
        raise VecapError(f"--val: no captioned, decodable sample in {', '.join(inputs)}")
    return ValSet(images, captions, torch.tensor(owners))


def _decode(data: bytes):
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB")


@torch.no_grad()
def _embed(encode: Callable, items: list, prepare: Callable, device, batch: int) -> torch.Tensor:
    parts = [encode(prepare(items[i : i + batch]).to(device)) for i in range(0, len(items), batch)]
    return F.normalize(torch.cat(parts).float(), dim=-1)


def recall(
    image_emb: torch.Tensor, text_emb: torch.Tensor, text_to_image: torch.Tensor, ks=(1, 5)
) -> dict[str, float]:
    """R@k image→text (an image's hit: any of its captions) and text→image."""
    sim = text_emb @ image_emb.T  # (n_texts, n_images)
    out = {}
    for k in ks:
        top_images = sim.topk(min(k, sim.shape[1]), dim=1).indices  # (n_texts, k)
        out[f"t2i_r{k}"] = (top_images == text_to_image[:, None]).any(1).float().mean().item()
        top_texts = sim.T.topk(min(k, sim.shape[0]), dim=1).indices  # (n_images, k)
        hits = text_to_image[top_texts] == torch.arange(sim.shape[1])[:, None]
        out[f"i2t_r{k}"] = hits.any(1).float().mean().item()
    return out


def retrieval(
    model: nn.Module, valset: ValSet, transform: Callable, tokenizer: Callable, device
) -> dict[str, float]:
    was_training = model.training
    model.eval()
    try:
        to_images = lambda batch: torch.stack([transform(_decode(b)) for b in batch])  # noqa: E731
        image_emb = _embed(model.encode_image, valset.images, to_images, device, 256)
        text_emb = _embed(model.encode_text, valset.captions, tokenizer, device, 256)
    finally:
        model.train(was_training)
    return recall(image_emb.cpu(), text_emb.cpu(), valset.text_to_image)
