"""`vecap mix`: choose the training caption among AltText and the rewrites.

VeCLIP trains on AltText and VeCap together, one drawn per sample and per epoch;
`CaptionDraw` is that draw, shared with `vecap train --text-keys`, so mixing
offline and mixing in the loader give the same captions.

A policy is a stage registered with `@policy(name, help)`; `vecap mix --policy`
offers what POLICIES holds, so a new policy is one function and its decorator.

Online curation (MetaCLIP 1.2 / 2) draws the balancing per epoch instead of
once: a record of the matched pool (`vecap curate --keep-matched`) is in an
epoch when `uniform(seed, "curate", key, epoch) < curate.p`. `OnlineDraw` is
that draw, shared with `vecap train --online-curation` like `CaptionDraw`.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from vecap_cli.rand import uniform
from vecap_cli.stream.sample import Sample
from vecap_cli.stream.tally import Tally


@dataclass(frozen=True)
class MixConfig:
    policy: str = "random"
    keys: tuple[str, ...] = ("alt", "vecap")
    probs: tuple[float, ...] | None = None  # per key, for `random`; None: equal
    seed: int = 0
    epoch: int = 0
    sep: str = " "
    online_curation: bool = False  # draw each record's inclusion from curate.p for `epoch`

    def __post_init__(self):
        if self.policy not in POLICIES:
            raise ValueError(f"unknown policy '{self.policy}' (choose from {', '.join(POLICIES)})")
        if not self.keys or any(not k for k in self.keys):
            raise ValueError("--keys needs at least one field name")
        if self.probs is not None:
            check_probs(self.probs, self.keys, "--probs")


@dataclass(frozen=True)
class Preset:
    """A published caption mix: `mix --preset` / `train --preset` NAME sets the fields
    and their probabilities. `alt` is the web AltText; `vecap` the synthetic caption
    that `vecap rewrite` (and `vecap caption --condition-on`) write."""

    keys: tuple[str, ...]
    probs: tuple[float, ...]
    help: str  # its line in --help: the mix and where it was published


PRESETS: dict[str, Preset] = {
    "veclip": Preset(
        ("alt", "vecap"), (0.5, 0.5), "AltText and VeCap 50/50 (VeCLIP, arXiv 2310.07699)"
    ),
    "recap": Preset(
        ("alt", "vecap"),
        (0.2, 0.8),
        "the recaption with p = 0.8 (Recap-DataComp-1B, arXiv 2406.08478)",
    ),
    "metaclip12": Preset(
        ("alt", "vecap"),
        (0.85, 0.15),
        "synthetic captions at 0.15 (MetaCLIP 1.2 / Altogether, arXiv 2410.17251)",
    ),
}


def preset_mix(
    name: str | None,
    keys: tuple[str, ...] | None,
    probs: tuple[float, ...] | None,
    flags: tuple[str, str],
) -> tuple[tuple[str, ...] | None, tuple[float, ...] | None]:
    """(keys, probs): the preset's when `name` is given, else the flags'. A preset
    with its explicit flags is ambiguous: ValueError('--preset: why')."""
    if name is None:
        return keys, probs
    if keys is not None or probs is not None:
        raise ValueError(f"--preset: sets {' and '.join(flags)} itself; give one or the other")
    return PRESETS[name].keys, PRESETS[name].probs


def check_probs(probs: tuple[float, ...], keys: tuple[str, ...], flag: str) -> None:
    """One probability per key, each finite and non-negative, summing to 1."""
    if len(probs) != len(keys):
        raise ValueError(f"{flag} has {len(probs)} values for {len(keys)} keys")
    if not all(math.isfinite(p) and p >= 0 for p in probs) or abs(sum(probs) - 1) > 1e-6:
        raise ValueError(
            f"{flag} must be finite, non-negative and sum to 1 (they sum to {sum(probs):g})"
        )


# The most captions one field may hold where each becomes work of its own (`mix
# --policy all` writes a record per caption, `vecap embed` embeds each): caption
# and rewrite --n write at most 64; a web record holding thousands is refused.
MAX_CAPTIONS = 256
TOO_MANY = "too-many-captions"


def captions(value: object) -> list[str]:
    """The captions a field holds: a non-blank string, or the non-blank strings of a
    list (`caption --n K` and `rewrite --n K` write K of them); else none."""
    if isinstance(value, str):
        return [value] if value.strip() else []
    if isinstance(value, list):
        return [text for text in value if isinstance(text, str) and text.strip()]
    return []


def available(record: dict, keys: Iterable[str], first: bool = False) -> list[tuple[str, str]]:
    """(field, caption) for each caption of each field, in `keys` order and, within
    a list-valued field, in list order; `first`: only the first of them."""
    found = []
    for name in keys:
        for text in captions(record.get(name)):
            found.append((name, text))
            if first:
                return found
    return found


class CaptionDraw:
    """Draws one (field, caption) per sample and epoch from hash(seed, key, epoch).

    The field is drawn by its probability, renormalized over the fields a record
    has, so a record without a rewrite trains on its AltText rather than being
    lost; then, when that field holds several captions (a list), one of them,
    each as likely, from hash(seed, key, epoch, "caption"). A record whose fields
    hold one caption each draws exactly as before lists existed.
    """

    def __init__(self, keys: tuple[str, ...], probs: tuple[float, ...] | None, seed: int):
        self.keys = keys
        self.weights = dict(zip(keys, probs or [1.0] * len(keys), strict=True))
        self.seed = seed

    def fields(self, record: dict) -> list[tuple[str, list[str]]]:
        """(field, its captions) for each field of `keys` with a caption and a weight."""
        found = []
        for name in self.keys:
            if self.weights[name] > 0 and (texts := captions(record.get(name))):
                found.append((name, texts))
        return found

    def __call__(self, record: dict, key: str, epoch: int) -> tuple[str, str] | None:
        found = self.fields(record)
        if not found:
            return None
        name, texts = found[0] if len(found) == 1 else self._field(found, key, epoch)
        if len(texts) == 1:
            return name, texts[0]
        return name, texts[int(uniform(self.seed, key, epoch, "caption") * len(texts))]

    def draw_k(self, record: dict, key: str, epoch: int, k: int) -> list[tuple[str, str]]:
        """Up to `k` distinct (field, caption), drawn without replacement for
        `train --positives K`: each draw as the single draw above (the field by its
        weight among the fields with captions left, then one of its captions left,
        each as likely), the drawn text then removed from every field. The first is
        exactly `self(record, key, epoch)`; draw t > 0 takes its numbers from
        hash(seed, key, epoch, "field", t) and hash(seed, key, epoch, "caption", t).
        Fewer than `k` when the record has fewer distinct captions."""
        left = self.fields(record)
        drawn: list[tuple[str, str]] = []
        while left and len(drawn) < k:
            t = len(drawn)
            name, texts = left[0] if len(left) == 1 else self._field(left, key, epoch, t)
            u = uniform(self.seed, key, epoch, "caption", *([t] if t else []))
            text = texts[0] if len(texts) == 1 else texts[int(u * len(texts))]
            drawn.append((name, text))
            left = [(n, rest) for n, ts in left if (rest := [x for x in ts if x != text])]
        return drawn

    def _field(
        self, found: list[tuple[str, list[str]]], key: str, epoch: int, t: int = 0
    ) -> tuple[str, list[str]]:
        weights = self.weights
        u = uniform(self.seed, key, epoch, *(["field", t] if t else []))
        threshold = u * sum(weights[name] for name, _ in found)
        for name, texts in found:
            threshold -= weights[name]
            if threshold < 0:
                return name, texts
        return found[-1]  # float rounding at the top edge


NOT_DRAWN = "online-curation"  # the drop rule of a record this epoch's draw leaves out
NO_P = "no-curate-p"  # the rejection of a record without a usable curate.p


def curate_p(record: dict) -> float | str:
    """The record's keep probability curate.p, or why it has none (a message)."""
    curate = record.get("curate")
    p = curate.get("p") if isinstance(curate, dict) else None
    if isinstance(p, bool) or not isinstance(p, int | float):
        return "record has no numeric curate.p (curate with `vecap curate --keep-matched`)"
    if not 0.0 <= p <= 1.0:  # NaN fails this too
        return f"curate.p is {p!r}, not a probability"
    return float(p)


class OnlineDraw:
    """Whether a record is in an epoch: `uniform(seed, "curate", key, epoch) < p`.

    "curate" keeps this draw apart from `CaptionDraw`'s uniform(seed, key, epoch):
    with the same number, the records kept would lean to the first caption. Each
    epoch draws anew, independently of the others, so a record of probability p
    is in a fraction p of the epochs and the expected epoch is the balanced pool
    (the sum of p), as the one-time draw of `vecap curate` expects it.
    """

    def __init__(self, seed: int):
        self.seed = seed

    def __call__(self, key: str, epoch: int, p: float) -> bool:
        return p >= 1.0 or uniform(self.seed, "curate", key, epoch) < p


def online_curation(
    samples: Iterable[Sample], tally: Tally, seed: int, epoch: int
) -> Iterator[Sample]:
    """The records drawn into `epoch`; the others dropped under `online-curation`,
    records without curate.p rejected under `no-curate-p` (a record that was never
    curated, or curated into another field, is a per-record problem: --strict
    makes it fatal). Counts `expected_kept`, the sum of p over the records read."""
    draw, count = OnlineDraw(seed), tally.count
    tally.declare("expected_kept")
    for sample in samples:
        p = curate_p(sample.record)
        if isinstance(p, str):
            tally.reject(NO_P, p, sample)
            continue
        count("expected_kept", sample, p)
        if draw(sample.key, epoch, p):
            yield sample
        else:
            tally.drop(NOT_DRAWN, sample)


Stage = Callable[[Iterable[Sample], Tally, MixConfig], Iterator[Sample]]


@dataclass(frozen=True)
class Policy:
    stage: Stage
    help: str  # its line in `vecap mix --help`


# `vecap mix --policy NAME`: filled by @policy below, in the order --help lists them
POLICIES: dict[str, Policy] = {}


def policy(name: str, help: str) -> Callable[[Stage], Stage]:
    """Registers a stage as the policy `name`: the CLI's choices and help read POLICIES."""

    def register(stage: Stage) -> Stage:
        POLICIES[name] = Policy(stage, help)
        return stage

    return register


def mix(samples: Iterable[Sample], tally: Tally, config: MixConfig) -> Iterator[Sample]:
    """Runs `config.policy` (on the records drawn into `config.epoch`, with
    online curation); counts the field each output's `text` came from in `chosen`."""
    tally.declare("chosen", keyed=True)
    if config.online_curation:
        samples = online_curation(samples, tally, config.seed, config.epoch)
    return POLICIES[config.policy].stage(samples, tally, config)


def choose_each(
    samples: Iterable[Sample], tally: Tally, choose: Callable[[Sample], tuple[str, str] | None]
) -> Iterator[Sample]:
    """The stage of a policy that keeps one caption per sample: `choose` gives the
    (field, caption) that becomes `text`, or None to drop the sample under `no-caption`."""
    count = tally.count
    for sample in samples:
        chosen = choose(sample)
        if chosen is None:
            tally.drop("no-caption", sample)
            continue
        name, text = chosen
        sample.record["text"] = text
        count("chosen", sample, key=name)
        yield sample


@policy("random", "draw one of --keys per sample and epoch")
def draw_one(samples: Iterable[Sample], tally: Tally, config: MixConfig) -> Iterator[Sample]:
    draw, epoch = CaptionDraw(config.keys, config.probs, config.seed), config.epoch
    return choose_each(samples, tally, lambda sample: draw(sample.record, sample.key, epoch))


@policy("all", "one sample per caption (keys suffixed _FIELD)")
def one_per_caption(samples: Iterable[Sample], tally: Tally, config: MixConfig) -> Iterator[Sample]:
    keys, count = config.keys, tally.count
    for sample in samples:
        found = available(sample.record, keys)
        if not found:
            tally.drop("no-caption", sample)
            continue
        if len(found) > MAX_CAPTIONS:  # each becomes a record carrying the whole one
            counts = Counter(name for name, _ in found)
            field, n = counts.most_common(1)[0]
            if n > MAX_CAPTIONS:
                tally.reject(
                    TOO_MANY, f"'{field}' holds {n:,} captions, over {MAX_CAPTIONS}", sample
                )
                continue
        tally.add("all", sample, len(found) - 1)
        for name, text, suffix in _suffixed(found):
            count("chosen", sample, key=name)
            yield sample.derive({**sample.record, "key": f"{sample.key}_{suffix}", "text": text})


def _suffixed(found: list[tuple[str, str]]) -> Iterator[tuple[str, str, str]]:
    """(field, caption, key suffix): the field's name, or NAME_I for the I-th
    caption of a field holding several, so every derived key is distinct."""
    per_field: dict[str, int] = {}
    for name, _ in found:
        per_field[name] = per_field.get(name, 0) + 1
    seen: dict[str, int] = {}
    for name, text in found:
        if per_field[name] == 1:
            yield name, text, name
        else:
            i = seen[name] = seen.get(name, -1) + 1
            yield name, text, f"{name}_{i}"


@policy("concat", "join them with --sep")
def joined(samples: Iterable[Sample], tally: Tally, config: MixConfig) -> Iterator[Sample]:
    keys, sep = config.keys, config.sep

    def join(sample: Sample) -> tuple[str, str] | None:
        found = available(sample.record, keys)
        if not found:
            return None
        return "+".join(name for name, _ in found), sep.join(text for _, text in found)

    return choose_each(samples, tally, join)


@policy("first", "the first one present")
def first_present(samples: Iterable[Sample], tally: Tally, config: MixConfig) -> Iterator[Sample]:
    keys = config.keys
    if not tally.tracking:
        return _first(samples, tally, keys)
    return choose_each(samples, tally, lambda sample: _first_caption(sample.record, keys))


def _first_caption(record: dict, keys: tuple[str, ...]) -> tuple[str, str] | None:
    found = available(record, keys, first=True)
    return found[0] if found else None


def _first(samples: Iterable[Sample], tally: Tally, keys: tuple[str, ...]) -> Iterator[Sample]:
    """`mix --policy first`, on its own: the floor every record command is measured by.
    Counts in bulk at the end, so only for output that seals nothing (not sharded)."""
    counts = dict.fromkeys(keys, 0)
    try:
        for sample in samples:
            record = sample.record
            for name in keys:
                text = record.get(name)
                if isinstance(text, str):
                    if text.strip():
                        break
                elif isinstance(text, list) and (texts := captions(text)):
                    text = texts[0]
                    break
            else:
                tally.drop("no-caption", sample)
                continue
            record["text"] = text
            counts[name] += 1
            yield sample
    finally:
        for name, n in counts.items():
            if n:
                tally.count("chosen", None, n, key=name)
