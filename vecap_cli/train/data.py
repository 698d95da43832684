"""Training batches from record streams: deterministic, resumable, counted.

An epoch is `steps` batches on every rank. Data worker w (of W) on rank r reads
slot s = r·W + w of world·W: its share of the inputs (whole shards when there
are enough, else every (world·W)-th record, as `iter_samples` splits), passed
through a shuffle buffer; it draws each sample's caption, decodes the image and
yields the epoch's batches j ≡ w (mod W), each of exactly `batch_size` samples.
The DataLoader takes them round-robin, so batch j comes from worker j mod W.
A share too short for its batches is read again (pass 1, 2, ...);
`resample` draws shards with replacement instead of splitting them.

With `positives` K > 1 (`--positives`) a batch holds B images and B·K texts,
image i's captions at rows i·K … i·K + K − 1: K distinct captions drawn without
replacement from the caption fields (`CaptionDraw.draw_k`). A record with fewer
than K distinct captions repeats them in turn (a, b, a, ...) and is counted in
`repeated-captions`: it still trains, as it would at K = 1.

Everything random derives from (seed, epoch, slot, pass, position) or from
(seed, key, epoch), so a worker's batches are a pure function of where it
starts. A batch carries its worker's position after it, (pass, taken); a
resumed run starts each worker there, skipping the taken samples unread by the
decoder, and rotates the workers so that the next batch is the one the
interrupted run would have trained next.

With `online_curation`, a sample is in epoch e when its draw
uniform(seed, "curate", key, e) < curate.p (`OnlineDraw`, shared with `vecap
mix --online-curation`): each epoch a fresh balanced sample of the matched pool.

Accounting: a sample is `in` when it leaves the shuffle buffer (or when the
reader rejects its record), then is trained (`out`), dropped (`online-curation`,
`no-caption`) or rejected (`no-curate-p`, `image-missing`, `bad-image`,
`image-too-large`, ...: see `stream/images.py`; under `distill`, `no-teacher`
and `bad-teacher`: see `teacher.py`). A batch carries the events of its
window and the main process replays them on its Tally, so the counts, the
--rejects file and --strict cover exactly the batches trained.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from vecap_cli.rand import uniform
from vecap_cli.steps.mix import NO_P, NOT_DRAWN, CaptionDraw, OnlineDraw, available, curate_p
from vecap_cli.stream.images import DEFAULT_LIMITS, ImageLimits, ImageRejected, decode
from vecap_cli.stream.runner import iter_samples
from vecap_cli.stream.sample import Sample
from vecap_cli.stream.tally import Tally
from vecap_cli.train.teacher import TeacherDraw, TeacherRejected

DEFAULT_KEYS = ("text", "alt")  # the caption a mix step chose, else the AltText

Position = tuple[int, int]  # (pass, samples taken from the shuffled pass)


@dataclass(frozen=True)
class DataPlan:
    """What every worker needs to know; picklable."""

    inputs: tuple[str, ...]  # expanded file names
    batch_size: int
    workers: int  # logical workers per rank (1 when the loader has none)
    rank: int = 0
    world_size: int = 1
    seed: int = 0
    shuffle_buffer: int = 1000
    resample: bool = False
    text_keys: tuple[str, ...] | None = None
    text_probs: tuple[float, ...] | None = None
    online_curation: bool = False  # keep a sample in an epoch with probability curate.p
    positives: int = 1  # captions per image: texts (b·K, ...) grouped by image
    image_limits: ImageLimits = DEFAULT_LIMITS  # --max-image-bytes, --max-pixels
    distill: bool = False  # read each sample's stored teacher embeddings (teacher.py)
    teacher_dim: int = 0  # with distill: the run's teacher width (teacher.teacher_dim)


REPEATED = "repeated-captions"  # records with fewer than K distinct captions (--positives K)


@dataclass
class Batch:
    images: torch.Tensor  # (b, 3, H, W)
    texts: torch.Tensor  # (b·K, context_length) int64, image i's K at rows i·K …
    worker: int
    position: Position  # the worker's position after this batch
    n_in: int = 0
    events: list = field(default_factory=list)
    error: str = ""  # a worker that cannot go on says why here (no traceback)
    teacher: tuple[torch.Tensor, torch.Tensor] | None = None  # --distill: image, text (b, Dt)


class _Recorder(Tally):
    """A worker's Tally: keeps drops and rejections for the main process to replay."""

    def __init__(self):
        super().__init__("train")
        self.events: list = []
        self.read_rejects = 0

    def drop(self, rule: str, sample: Sample, n: int = 1) -> None:
        self.events.append(("drop", (rule, _bare(sample), n), {}))

    def reject(self, reason: str, detail: str = "", sample: Sample | None = None, **where) -> None:
        if sample is None:  # the reader's: a record that never became a sample
            self.read_rejects += 1
        self.events.append(("reject", (reason, detail, _bare(sample)), where))

    def take(self) -> tuple[list, int]:
        events, reads = self.events, self.read_rejects
        self.events, self.read_rejects = [], 0
        return events, reads


def _bare(sample: Sample | None) -> Sample | None:
    """The sample without its image bytes: what a rejects line needs."""
    if sample is None:
        return None
    return Sample(sample.record, None, sample.idx, sample.source, sample.pos)


def replay(events: Iterable, tally: Tally) -> None:
    for kind, args, kwargs in events:
        getattr(tally, kind)(*args, **kwargs)


def buffer_shuffle(items: Iterable, size: int, draw: Callable[[int], float]) -> Iterator:
    """webdataset's buffer shuffle, with the n-th pick drawn by `draw(n)` in [0, 1)."""
    buf: list = []
    n = 0
    for item in items:
        if len(buf) < size:
            buf.append(item)
            continue
        i = int(draw(n) * size)
        n += 1
        yield buf[i]
        buf[i] = item
    while buf:
        i = int(draw(n) * len(buf))
        n += 1
        buf[i], buf[-1] = buf[-1], buf[i]
        yield buf.pop()


def _literal(name: str) -> str:
    """A file name that `expand` will not read as a glob."""
    return glob.escape(name)


def shard_keys(names: Iterable[str]) -> dict[str, str]:
    """Each shard's name below the folder all of them share: the key its place in the
    shuffled order derives from, so a copy of the data elsewhere trains the same."""
    names = list(names)
    # the common prefix cut back to a '/': commonpath's answer, for pipe: commands too
    cut = os.path.commonprefix(names).rfind("/") + 1  # noqa: RUF071
    return {name: name[cut:] for name in names}


class _Share:
    """One reader slot's endless run of shuffled samples, pass after pass."""

    def __init__(self, plan: DataPlan, epoch: int, slot: int, start: Position):
        self.plan, self.epoch, self.slot = plan, epoch, slot
        self.recorder = _Recorder()
        self.pass_, self.taken = start
        self.good = self.taken  # usable samples this pass; unknown before `start`: assume some
        self._it = self._open(self.pass_)
        for _ in range(self.taken):
            next(self._it, None)
        self.recorder.take()  # the skipped samples' events belong to batches trained before

    def _names(self, pass_: int) -> tuple[list[str], int, int]:
        plan, seed = self.plan, self.plan.seed
        slots = plan.world_size * plan.workers
        if plan.resample:
            n = len(plan.inputs)
            picks = [
                plan.inputs[int(uniform(seed, "resample", self.epoch, self.slot, pass_, i) * n)]
                for i in range(n)
            ]
            return picks, 0, 1
        keys = shard_keys(plan.inputs)
        order = sorted(
            plan.inputs, key=lambda name: uniform(seed, "shards", self.epoch, pass_, keys[name])
        )
        return order, self.slot, slots

    def _open(self, pass_: int) -> Iterator[Sample]:
        names, slot, slots = self._names(pass_)
        samples = iter_samples(
            [_literal(n) for n in names], self.recorder, rank=slot, world_size=slots
        )
        seed, epoch = self.plan.seed, self.epoch
        return buffer_shuffle(
            samples,
            self.plan.shuffle_buffer,
            lambda n: uniform(seed, "shuffle", epoch, self.slot, pass_, n),
        )

    def next(self) -> Sample:
        while True:
            sample = next(self._it, None)
            if sample is not None:
                self.taken += 1
                return sample
            if not self.good:
                raise _NoData
            self.pass_, self.taken, self.good = self.pass_ + 1, 0, 0
            self._it = self._open(self.pass_)


class _NoData(Exception):
    """A slot whose whole share holds no usable sample."""


def caption_picker(plan: DataPlan) -> Callable[[Sample, int], str | None]:
    if plan.text_keys is None:

        def default(sample: Sample, epoch: int) -> str | None:
            found = available(sample.record, DEFAULT_KEYS, first=True)
            return found[0][1] if found else None

        return default
    draw = CaptionDraw(plan.text_keys, plan.text_probs, plan.seed)

    def drawn(sample: Sample, epoch: int) -> str | None:
        pick = draw(sample.record, sample.key, epoch)
        return pick[1] if pick else None

    return drawn


def positives_picker(plan: DataPlan) -> Callable[[Sample, int], list[str]]:
    """`--positives K`: up to K distinct captions of a sample, drawn without replacement
    from --text-keys (default: text and alt, equally)."""
    keys = DEFAULT_KEYS if plan.text_keys is None else plan.text_keys
    draw = CaptionDraw(keys, plan.text_probs, plan.seed)
    k = plan.positives

    def drawn(sample: Sample, epoch: int) -> list[str]:
        return [text for _, text in draw.draw_k(sample.record, sample.key, epoch, k)]

    return drawn


def cycled(texts: list[str], k: int) -> list[str]:
    """`k` captions from the distinct `texts` (at least one), repeated in turn."""
    return [texts[i % len(texts)] for i in range(k)]


def load_image(sample: Sample, limits: ImageLimits = DEFAULT_LIMITS):
    """The sample's image as RGB; ImageRejected (with its reason) when there is none
    to train on."""
    return decode(sample.image_bytes(limits), limits)


def augment_seed(seed: int, key: str, epoch: int, pass_: int) -> int:
    return int(uniform(seed, "augment", key, epoch, pass_) * 2**62)


class TrainData(IterableDataset):
    """Batches for one rank; call `start_epoch` before each iteration."""

    def __init__(self, plan: DataPlan, transform: Callable, tokenizer: Callable):
        super().__init__()
        self.plan = plan
        self.transform = transform
        self.tokenizer = tokenizer
        self.caption = caption_picker(plan) if plan.positives == 1 else positives_picker(plan)
        self.online = OnlineDraw(plan.seed) if plan.online_curation else None
        keys = plan.text_keys or DEFAULT_KEYS
        self.teacher = TeacherDraw(plan.seed, keys, plan.teacher_dim) if plan.distill else None
        self.epoch, self.steps, self.first = 0, 0, 0
        self.positions: list[Position] = [(0, 0)] * plan.workers

    def start_epoch(self, epoch: int, steps: int, first: int, positions: list[Position]) -> None:
        """Yield batches `first` .. `steps`-1 of `epoch`, workers starting at `positions`."""
        assert len(positions) == self.plan.workers
        self.epoch, self.steps, self.first, self.positions = epoch, steps, first, list(positions)

    def __iter__(self) -> Iterator[Batch]:
        info = get_worker_info()
        n_workers = info.num_workers if info else 1
        assert n_workers == self.plan.workers, "DataPlan.workers must match the loader"
        worker = ((info.id if info else 0) + self.first) % n_workers
        # the batches j >= first with j ≡ worker (mod W)
        quota = len(range(self.first + (worker - self.first) % n_workers, self.steps, n_workers))
        yield from self._batches(worker, quota)

    def _batches(self, worker: int, quota: int) -> Iterator[Batch]:
        plan = self.plan
        slot = plan.rank * plan.workers + worker
        share = _Share(plan, self.epoch, slot, self.positions[worker])
        for _ in range(quota):
            try:
                images, captions, n_in, teachers = self._fill(share)
            except _NoData:
                yield Batch(
                    torch.empty(0), torch.empty(0), worker, (0, 0), error=_no_data(plan, slot)
                )
                return
            events, read_rejects = share.recorder.take()
            yield Batch(
                torch.stack(images),
                self.tokenizer(captions),
                worker,
                (share.pass_, share.taken),
                n_in + read_rejects,
                events,
                teacher=_stack_teacher(teachers) if self.teacher else None,
            )

    def _fill(self, share: _Share) -> tuple[list, list[str], int, list]:
        # The transforms draw crops from torch's CPU generator: seeded per sample, and
        # given back as it was, so the caller's random stream (workers=0) is untouched.
        rng = torch.get_rng_state()
        try:
            return self._fill_seeded(share)
        finally:
            torch.set_rng_state(rng)

    def _fill_seeded(self, share: _Share) -> tuple[list, list[str], int, list]:
        images, captions, n_in, teachers = [], [], 0, []
        recorder = share.recorder
        generator = torch.default_generator  # CPU only: torch.manual_seed also queues
        # lazy seeds for CUDA/XPU/MTIA, recording a stack trace each time (~1 ms)
        while len(images) < self.plan.batch_size:
            sample = share.next()
            n_in += 1
            if self.online is not None and not self._drawn(sample, recorder):
                continue
            caption = self.caption(sample, self.epoch)
            if not caption:  # None, or no caption of K
                recorder.drop("no-caption", sample)
                continue
            try:
                image = load_image(sample, self.plan.image_limits)
            except ImageRejected as err:
                recorder.reject(err.reason, str(err), sample)
                continue
            if self.teacher is not None:
                try:
                    image, *rows = self.teacher(sample, image, caption, self.epoch)
                except TeacherRejected as err:
                    recorder.reject(err.reason, str(err), sample)
                    continue
                teachers.append(rows)
            generator.manual_seed(augment_seed(self.plan.seed, sample.key, self.epoch, share.pass_))
            images.append(self.transform(image))
            if isinstance(caption, str):
                captions.append(caption)
            else:
                captions += self._positives(caption, sample, recorder)
            share.good += 1
        return images, captions, n_in, teachers

    def _positives(self, texts: list[str], sample: Sample, recorder: _Recorder) -> list[str]:
        k = self.plan.positives
        if len(texts) < k:
            recorder.events.append(("count", (REPEATED, _bare(sample)), {}))
        return cycled(texts, k)

    def _drawn(self, sample: Sample, recorder: _Recorder) -> bool:
        """Online curation: whether the sample is in this epoch's draw (else counted)."""
        p = curate_p(sample.record)
        if isinstance(p, str):
            recorder.reject(NO_P, p, sample)
            return False
        if not self.online(sample.key, self.epoch, p):
            recorder.drop(NOT_DRAWN, sample)
            return False
        return True


def _stack_teacher(rows: list) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(image rows, text rows), each (b, Dt) fp32; None when the widths disagree across
    records (two teachers in one batch), which the loss then refuses in one line."""
    widths = {row.shape for pair in rows for row in pair}
    if len(widths) != 1:
        return None
    image, text = (torch.from_numpy(np.stack(column)) for column in zip(*rows, strict=True))
    return image, text


def _no_data(plan: DataPlan, slot: int) -> str:
    readers = plan.world_size * plan.workers
    return (
        f"data reader {slot} of {readers} (ranks × --workers) has no usable sample in its share "
        f"of {len(plan.inputs)} input(s): use fewer --workers, or more data"
    )


def loader(dataset: TrainData, workers: int) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=None,  # the dataset batches: a batch must come whole from one worker
        num_workers=workers,
        in_order=True,  # round-robin over workers: what makes batch j come from worker j mod W
        prefetch_factor=2 if workers else None,
        persistent_workers=False,
    )


def expected_samples(inputs: Iterable[str]) -> tuple[float, int]:
    """(the sum of curate.p, records read) over the inputs, in one read: online
    curation's expected epoch, the size of the balanced pool. Records without a
    usable curate.p add nothing (training rejects them)."""
    tally = Tally("count")
    total, n = 0.0, 0
    for sample in iter_samples([_literal(name) for name in inputs], tally):
        n += 1
        p = curate_p(sample.record)
        if not isinstance(p, str):
            total += p
    return total, n


def count_samples(inputs: Iterable[str]) -> int:
    """Records in the inputs (one read): the epoch size when none is given."""
    tally = Tally("count")
    return sum(1 for _ in iter_samples([_literal(n) for n in inputs], tally)) + sum(
        tally.rejected.values()
    )


def first_teacher_dim(inputs: tuple[str, ...]) -> int:
    """--distill: the teacher width of the run, from the first input's records (all
    ranks read the same first file, so they agree)."""
    from vecap_cli.train.teacher import teacher_dim

    samples = iter_samples([_literal(inputs[0])], Tally("train"))
    try:
        return teacher_dim(samples)
    finally:
        samples.close()
