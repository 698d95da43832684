"""`vecap embed`: a teacher's embeddings of each record's image, under K
augmentations, and of its captions, stored beside the record (the format:
stream/teacher.py), as MobileCLIP's reinforced datasets store them.

Augmentation k of a record is `stream.augment.augment(image, seed, key, k)`, so
`vecap train --distill` reproduces the crop from the seed alone. Each view is
then preprocessed by each teacher's own preprocessing, as `vecap eval` loads the
model (eval/models.py) and embeds (eval/embed.py): L2-normalized rows.

Several teachers make an ensemble. `concat` (the default) joins each teacher's
normalized embedding and normalizes the result, as apple/ml-mobileclip-dr
(scripts/gen.py, EmbeddingModel) stores DataCompDR's two ViT-L/14 teachers:
`torch.cat` of each model's normalized features. Normalizing the join divides
by sqrt(M) for M teachers, so a dot product of two stored rows is the mean of
the teachers' cosines (MobileCLIP's DistillClipLoss on the joined features, up
to the logit scale), and a teacher's slice times sqrt(M) is its own unit
embedding (for the loss's per-teacher `teacher_dimension` split). `mean`
averages the normalized embeddings of teachers of one size, then normalizes.

A record meets, in order: a teacher it already has (`has-teacher`, rejected:
web data does not choose the embeddings a model distils from; --overwrite
replaces them), a caption field holding over MAX_CAPTIONS captions
(`too-many-captions`), then its image (the image path's rejections); a member
that would be over stream.teacher.MAX_BYTES (`teacher-too-large`) is not
written. A caption field
that is absent or holds no non-blank caption is left out of `teacher.text`;
a record without any still gets its image embeddings.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

from vecap_cli.errors import VecapError
from vecap_cli.generate.ahead import map_ahead
from vecap_cli.placement import Placement, device_name
from vecap_cli.steps.batching import in_batches
from vecap_cli.steps.mix import MAX_CAPTIONS, TOO_MANY, captions
from vecap_cli.stream import teacher as fmt
from vecap_cli.stream.augment import augment
from vecap_cli.stream.images import DEFAULT_LIMITS, ImageLimits, ImageRejected, decode
from vecap_cli.stream.sample import Sample
from vecap_cli.stream.tally import Tally

HAS_TEACHER = "has-teacher"
TOO_LARGE = "teacher-too-large"


@dataclass(frozen=True)
class EmbedConfig:
    models: tuple[tuple[str, str | None], ...]  # (--model, --pretrained or None)
    tokenizer: str | None = None
    text_keys: tuple[str, ...] = ("alt",)
    augmentations: int = 1
    ensemble: str = "concat"
    seed: int = 0
    overwrite: bool = False
    batch_size: int = 64  # images per forward pass
    threads: int = 4  # decode threads; 0 decodes inline
    device: str = "auto"
    image_limits: ImageLimits = DEFAULT_LIMITS

    def identity(self) -> tuple:
        """What decides the output: a resumed run must agree on it (batching may differ)."""
        return (self.models, self.tokenizer, self.text_keys, self.augmentations, self.ensemble,
                self.seed, self.overwrite)  # fmt: skip

    def labels(self) -> list[str]:
        return [f"{m}:{p}" if p else m for m, p in self.models]


class Teacher(Protocol):
    preprocesses: list[Callable]  # one per model, in a worker thread: RGB PIL -> (3, H, W)

    def embed(self, pixels: list, texts: list[str]) -> tuple[object, object]:
        """(images (N, D), texts (T, D)) unit rows; pixels[m]: model m's (N, 3, H, W)."""
        ...


class _Rejected(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


@dataclass
class _Item:
    pixels: list  # per model: (K, 3, H, W)
    texts: dict[str, list[str]]  # field -> its captions, in --text-keys order


def embed(
    samples: Iterable[Sample], tally: Tally, config: EmbedConfig, load: Callable[[], Teacher]
) -> Iterator[Sample]:
    """`load` builds the teacher when the first record has been read: an input that
    cannot be opened fails before a model loads, and an empty input loads none."""
    samples = iter(samples)
    first = next(samples, None)
    if first is None:
        return
    teacher = load()
    k = config.augmentations

    def prepare(sample: Sample) -> _Item:
        if _has_teacher(sample) and not config.overwrite:
            raise _Rejected(HAS_TEACHER, "the record has teacher embeddings (--overwrite)")
        texts = {f: c for f in config.text_keys if (c := captions(sample.record.get(f)))}
        if any(len(c) > MAX_CAPTIONS for c in texts.values()):
            raise _Rejected(TOO_MANY, f"a --text-keys field holds over {MAX_CAPTIONS} captions")
        image = decode(sample.image_bytes(config.image_limits), config.image_limits)
        views = [augment(image, config.seed, sample.key, i) for i in range(k)]
        return _Item([_stack([prep(v) for v in views]) for prep in teacher.preprocesses], texts)

    def prepared() -> Iterator[tuple[Sample, _Item]]:
        ahead = max(2 * config.batch_size // k, 2 * config.threads, 8)
        chained = itertools.chain([first], samples)
        for sample, item in map_ahead(prepare, chained, config.threads, ahead):
            if isinstance(item, BaseException):
                _leave(tally, sample, item)
            else:
                yield sample, item

    # a forward pass holds --batch-size images: that many over K records
    tally.hold()  # decoding runs ahead of the batches: --rejects in input order all the same
    try:
        for group in in_batches(prepared(), max(1, config.batch_size // k)):
            yield from _embedded(group, teacher, tally, config)
            tally.release(group[-1][0].idx + 1)
    finally:
        tally.release()


def _embedded(group: list, teacher: Teacher, tally: Tally, config: EmbedConfig) -> Iterator[Sample]:
    """One batch's samples with their teacher members (or rejected)."""
    k = config.augmentations
    items = [item for _, item in group]
    pixels = [_cat([item.pixels[m] for item in items]) for m in range(len(items[0].pixels))]
    texts = [text for item in items for caps in item.texts.values() for text in caps]
    images, embedded = teacher.embed(pixels, texts)  # (len(group) * K, D), (T, D)
    row = 0
    for i, (sample, item) in enumerate(group):
        stored = _store(sample, item, images[i * k : (i + 1) * k], embedded, row, config)
        row += sum(map(len, item.texts.values()))
        if stored is None:  # read_teacher would refuse it
            tally.reject(TOO_LARGE, f"a teacher member is over {fmt.MAX_BYTES:,} bytes", sample)
        else:
            yield stored


def _store(
    sample: Sample, item: _Item, image, texts, row: int, config: EmbedConfig
) -> Sample | None:
    """The sample with its members and its record's `teacher` (rows from `row` of
    `texts` are its captions'), or None when a member would be over the cap."""
    members = {fmt.IMAGE_MEMBER: fmt.to_npy(image)}
    names = {}
    for field, caps in item.texts.items():
        names[field] = fmt.text_member(field)
        members[names[field]] = fmt.to_npy(texts[row : row + len(caps)])
        row += len(caps)
    if max(map(len, members.values())) > fmt.MAX_BYTES:
        return None
    _strip(sample)  # what --overwrite replaces
    sample.members.update(members)
    sample.record[fmt.FIELD] = {
        "image": fmt.IMAGE_MEMBER,
        "text": names,
        "augmentations": config.augmentations,
        "dim": int(image.shape[1]),
        "seed": config.seed,
        "models": config.labels(),
        "ensemble": config.ensemble,
        "key": sample.key,
    }
    return sample


def _has_teacher(sample: Sample) -> bool:
    return fmt.FIELD in sample.record or any(map(fmt.is_teacher_member, sample.members))


def _strip(sample: Sample) -> None:
    sample.record.pop(fmt.FIELD, None)
    for ext in [e for e in sample.members if fmt.is_teacher_member(e)]:
        del sample.members[ext]


def _leave(tally: Tally, sample: Sample, err: BaseException) -> None:
    if isinstance(err, _Rejected | ImageRejected):
        tally.reject(err.reason, str(err), sample)
    else:
        tally.reject("bad-image", f"{type(err).__name__}: {err}", sample)


def _stack(tensors: list):
    import torch

    return torch.stack(tensors)


def _cat(tensors: list):
    import torch

    return torch.cat(tensors)


def combine(embeddings: list, ensemble: str):
    """One (N, D) set of unit rows from each teacher's (N, D_m) unit rows: `concat`
    joins them (D = sum D_m), `mean` averages them (one D); then normalizes."""
    import torch
    import torch.nn.functional as F

    if len(embeddings) == 1:
        return embeddings[0]
    joined = (
        torch.cat(embeddings, dim=-1) if ensemble == "concat" else torch.stack(embeddings).mean(0)
    )
    return F.normalize(joined, dim=-1)


class ClipTeacher:
    """The --model(s) as `vecap eval` loads and runs them (eval/models.py,
    eval/embed.py), on this rank's device; their embeddings combined by --ensemble."""

    def __init__(self, config: EmbedConfig, placement: Placement, log=lambda line: None):
        import torch

        from vecap_cli.eval.embed import Encoder
        from vecap_cli.eval.models import load_model

        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        device = device_name(config.device, placement, gpus)
        self.encoders, self.preprocesses = [], []
        for name, pretrained in config.models:
            loaded = load_model(name, pretrained, config.tokenizer, device, config.seed, log)
            self.encoders.append(Encoder(loaded.model, loaded.tokenizer, device))
            self.preprocesses.append(loaded.preprocess)
        self.ensemble, self.batch_size = config.ensemble, config.batch_size
        dims = [encoder.texts(["a photo"], 1).shape[1] for encoder in self.encoders]
        if config.ensemble == "mean" and len(set(dims)) > 1:
            sizes = ", ".join(
                f"{label} {d}" for label, d in zip(config.labels(), dims, strict=True)
            )
            raise VecapError(f"--ensemble mean needs one embedding size, got {sizes}: use concat")

    def embed(self, pixels: list, texts: list[str]):
        images = [enc.images(p) for enc, p in zip(self.encoders, pixels, strict=True)]
        if texts:
            text = combine(
                [enc.texts(texts, self.batch_size) for enc in self.encoders], self.ensemble
            )
        else:
            text = None
        return combine(images, self.ensemble).numpy(), None if text is None else text.numpy()
