"""The demo's report: the eval table, what curation and the captioner did, and a plot.

    python report.py WORK

Reads what the Makefile left in WORK and writes WORK/results.md (the `vecap
eval --compare` table, the headline R@1, each row against AltText only and the
mix, curation by AltText kind, how often AltText, VeC, the sampled VeCs and
VeCap state each attribute of the scene correctly, step times) and
WORK/results.png (the metrics side by side, and text→image R@1 on the held-out
split while training).
"""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter
from pathlib import Path

from world import COLOURS, POSITIONS, SHAPES, plural

RUNS = ("alt", "mixed", "vec", "vec-k", "pos", "distill", "teacher")  # the Makefile's CLIPS
LABELS = {
    "alt": "AltText only",
    "mixed": "AltText + VeCap (mixed)",
    "vec": "AltText + VeC",
    "vec-k": "AltText + K sampled VeCs",
    "pos": "mixed, multi-positive",
    "distill": "mixed, distilled",
    "teacher": "teacher (mixed, longer)",
}
WHAT = {  # what each row changes, for the rows table
    "alt": "the AltText alone",
    "mixed": "VeCLIP: AltText or VeCap, 50/50 per sample and epoch",
    "vec": "the captioner's greedy VeC in place of VeCap",
    "vec-k": "K VeCs sampled per image (`caption --n K`), one drawn per sample and epoch",
    "pos": "AltText and VeCap both positives of the image each step (`train --positives 2`)",
    "distill": "the mix plus distillation from the teacher's stored embeddings "
    "(`embed`, `train --distill`)",
    "teacher": "the mix trained longer: the reference the student distils from, not the same steps",
}
ATTRIBUTES = ("colour", "shape", "count", "size", "position", "background")
STEPS = (  # (step, stats file) in pipeline order
    ("curate", "curate-stats.json"),
    ("train captioner (CoCa)", "runs/coca-stats.json"),
    ("caption", "caption-stats.json"),
    ("rewrite", "rewrite-stats.json"),
    ("mix", "mix-stats.json"),
    ("train CLIP, AltText only", "runs/alt-stats.json"),
    ("train CLIP, mixed", "runs/mixed-stats.json"),
    ("train CLIP, AltText + VeC", "runs/vec-stats.json"),
    ("caption K per image (sampled)", "caption-k-stats.json"),
    ("mix, K sampled VeCs", "mix-k-stats.json"),
    ("train CLIP, K sampled VeCs", "runs/vec-k-stats.json"),
    ("train CLIP, multi-positive", "runs/pos-stats.json"),
    ("train teacher (mixed, longer)", "runs/teacher-stats.json"),
    ("embed (teacher)", "embed-stats.json"),
    ("train CLIP, distilled", "runs/distill-stats.json"),
)
CONDITIONED = (  # the row the mini cannot run, and what a user runs on real data
    "Not run: **conditioned captions (one pass)**. It needs a captioner that reads a "
    "prompt, and the mini's CoCa reads none (`caption --condition-on` takes the hf and "
    "openai backends). On real data: `vecap caption kept.jsonl --model ./llava-1.5-7b-hf "
    "--condition-on alt -o vecap.jsonl`, then the same mix and `train --text-keys "
    "alt,vecap`."
)


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# -- what a caption states --------------------------------------------------------

_SHAPE_WORDS = {plural(s, n): s for s in SHAPES for n in (1, 2)}
_WORD = re.compile(r"[a-z]+|\d+")


def parse(text: str) -> dict[str, object]:
    """The scene attributes a caption states (None: not stated), as the world words them."""
    low = text.lower()
    words = _WORD.findall(low)
    found: dict[str, object] = dict.fromkeys(ATTRIBUTES)
    found["colour"] = next((w for w in words if w in COLOURS), None)
    shape_word = next((w for w in words if w in _SHAPE_WORDS), None)
    found["shape"] = _SHAPE_WORDS.get(shape_word)
    if "three" in words or "3" in words:
        found["count"] = 3
    elif "two" in words or "2" in words:
        found["count"] = 2
    elif shape_word in SHAPES:  # singular
        found["count"] = 1
    found["size"] = next(
        ({"mini": "small", "big": "large"}.get(w, w) for w in words if w in SIZE_WORDS), None
    )
    found["position"] = next((p for p in POSITIONS if p in low), None)
    match = re.search(r"(\w+) background", low)
    found["background"] = match.group(1) if match else None
    return found


SIZE_WORDS = {"small", "mini", "large", "big"}


def stated(records: list[dict], truth: dict[str, dict], field: str) -> dict[str, float]:
    """Share of records whose `field` states each attribute of the scene correctly."""
    right, total = Counter(), Counter()
    for record in records:
        scene = truth[record["key"]]
        said = parse(record.get(field) or "")
        for attr in ATTRIBUTES:
            if attr == "position" and not scene["position"]:
                continue  # groups have no position
            total[attr] += 1
            right[attr] += said[attr] == scene[attr]
    return {a: right[a] / total[a] if total[a] else float("nan") for a in ATTRIBUTES}


# -- sections ---------------------------------------------------------------------


def headline(work: Path) -> tuple[str, dict[str, dict]]:
    metrics = {}
    for run in RUNS:
        results = json.loads((work / "eval" / f"{run}.json").read_text())
        metrics[run] = {r["dataset"]: r["metrics"] for r in results}
    r1 = {run: metrics[run]["mini-test"]["image_retrieval_recall@1"] for run in RUNS}
    verdict = "beats" if r1["mixed"] > r1["alt"] else "does NOT beat"
    text = (
        f"Held-out text→image R@1: **AltText only {100 * r1['alt']:.1f}%**, "
        f"**mixed {100 * r1['mixed']:.1f}%** (mixed {verdict} AltText only, "
        f"{100 * (r1['mixed'] - r1['alt']):+.1f} points)."
    )
    return text, metrics


def rows(work: Path, metrics: dict[str, dict]) -> str:
    """Each row against AltText only and the mix: R@1 both ways, shape and colour top-1."""

    def score(run: str) -> tuple[float, float, float, float]:
        m = metrics[run]
        return (
            m["mini-test"]["image_retrieval_recall@1"],
            m["mini-test"]["text_retrieval_recall@1"],
            m["mini-shape"]["acc1"],
            m["mini-colour"]["acc1"],
        )

    def delta(run: str, base: str, i: int) -> str:
        return "" if run == base else f"{100 * (score(run)[i] - score(base)[i]):+.1f}"

    lines = []
    for run in RUNS:
        t2i, i2t, shape, colour = score(run)
        stats = json.loads((work / "runs" / f"{run}-stats.json").read_text())
        lines.append(
            f"| {label(work, run)} | {WHAT[run]} | {stats.get('steps', '?')} | "
            f"{100 * t2i:.1f} | {delta(run, 'alt', 0)} | {delta(run, 'mixed', 0)} | "
            f"{100 * i2t:.1f} | {delta(run, 'mixed', 1)} | {100 * shape:.1f} | {100 * colour:.1f} |"
        )
    return "\n".join(
        [
            "| row | what changes | steps | text→image R@1 | vs AltText only | vs mixed | "
            "image→text R@1 | vs mixed | shape top-1 | colour top-1 |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
            *lines,
            "",
            CONDITIONED,
        ]
    )


def label(work: Path, run: str) -> str:
    """The row's label, with its K where the run has one."""
    if run == "vec-k":
        k = max(
            (len(r["vec"]) for r in jsonl(work / "vec-k.jsonl") if isinstance(r["vec"], list)),
            default=1,
        )
        return f"AltText + {k} sampled VeCs"
    if run == "pos":
        stats = json.loads((work / "runs" / "pos-stats.json").read_text())
        return f"mixed, multi-positive (K = {stats.get('positives', '?')})"
    return LABELS[run]


def curation(work: Path, truth: dict[str, dict]) -> str:
    stats = json.loads((work / "curate-stats.json").read_text())
    kept = {r["key"] for r in jsonl(work / "kept.jsonl")}
    pool, after = Counter(), Counter()
    for key, scene in truth.items():
        pool[scene["kind"]] += 1
        after[scene["kind"]] += key in kept
    rows = [
        f"| {kind} | {pool[kind]:,} | {after[kind]:,} | {100 * after[kind] / pool[kind]:.0f}% |"
        for kind in sorted(pool, key=lambda k: -pool[k])
    ]
    c = stats.get("curate", {})
    head = c.get("head", {})
    dropped = ", ".join(f"{n:,} {rule}" for rule, n in stats["dropped"].items())
    return "\n".join(
        [
            f"`vecap curate` (t = {c.get('t')}): in {stats['in']:,} = out {stats['out']:,} + "
            f"dropped {dropped}. {head.get('entries', '?')} head entries hold "
            f"{100 * head.get('share', 0):.0f}% of the matches and are sub-sampled "
            "(top entries in `curate-report.txt`).",
            "",
            "| AltText kind | pool | kept | kept % |",
            "|---|---:|---:|---:|",
            *rows,
        ]
    )


def captions(work: Path, truth: dict[str, dict]) -> str:
    records = jsonl(work / "vecap.jsonl")
    table = {field: stated(records, truth, field) for field in ("alt", "vec", "vecap")}
    # each of the K sampled VeCs of a record, as a record of its own
    sampled = [
        {"key": r["key"], "vec": text}
        for r in jsonl(work / "vec-k.jsonl")
        for text in (r["vec"] if isinstance(r["vec"], list) else [r["vec"]])
    ]
    table["sampled"] = stated(sampled, truth, "vec")
    fields = ("alt", "vec", "sampled", "vecap")
    rows = [
        f"| {attr} | " + " | ".join(f"{100 * table[f][attr]:.0f}%" for f in fields) + " |"
        for attr in ATTRIBUTES
    ]
    from world import Scene, describe

    exact = sum(
        r["vec"] == describe(Scene(**{k: truth[r["key"]][k] for k in Scene.__annotations__}))
        for r in records
    )
    examples = [
        f"| {r['alt']} | {r['vec']} | {r['vecap']} |"
        for r in records
        if r["alt"] and r["vecap"] != r["vec"]
    ][:3] + [f"| {r['alt']} | {r['vec']} | {r['vecap']} |" for r in records[:2]]
    return "\n".join(
        [
            f"Share of the {len(records):,} curated records whose caption states each "
            "attribute of the scene correctly (position: lone objects only). "
            f"The captioner's VeC is exactly the clean description for "
            f"{100 * exact / len(records):.0f}% of them.",
            "",
            "| attribute | AltText | VeC | sampled VeC (each) | VeCap |",
            "|---|---:|---:|---:|---:|",
            *rows,
            "",
            "| AltText | VeC | VeCap |",
            "|---|---|---|",
            *examples,
        ]
    )


def timings(work: Path) -> str:
    rows = []
    for step, name in STEPS:
        path = work / name
        if path.is_file():
            stats = json.loads(path.read_text())
            extra = f" ({stats['steps']:,} steps)" if "steps" in stats else ""
            rows.append(f"| {step} | {stats.get('seconds', float('nan')):.0f}{extra} |")
    return "\n".join(["| step | seconds |", "|---|---:|", *rows])


# -- the plot ---------------------------------------------------------------------

BARS = (
    ("mini-test", "image_retrieval_recall@1", "text→image\nR@1"),
    ("mini-test", "image_retrieval_recall@5", "text→image\nR@5"),
    ("mini-test", "text_retrieval_recall@1", "image→text\nR@1"),
    ("mini-test", "text_retrieval_recall@5", "image→text\nR@5"),
    ("mini-shape", "acc1", "shape\ntop-1"),
    ("mini-colour", "acc1", "colour\ntop-1"),
)


def plot(work: Path, metrics: dict[str, dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (bars, curves) = plt.subplots(1, 2, figsize=(14, 4.8), width_ratios=(3, 2))
    width = 0.84 / len(RUNS)
    for i, run in enumerate(RUNS):
        values = [100 * metrics[run][d][m] for d, m, _ in BARS]
        xs = [x + (i - (len(RUNS) - 1) / 2) * width for x in range(len(BARS))]
        drawn = bars.bar(xs, values, width, label=LABELS[run])
        bars.bar_label(drawn, fmt="%.0f", fontsize=5)
    bars.set_xticks(range(len(BARS)), [label for _, _, label in BARS], fontsize=8)
    bars.set_ylabel("% on the held-out split")
    bars.set_title("Held-out evaluation (vecap eval)")
    bars.legend(fontsize=7)
    for run in RUNS:
        points = [
            (line["step"], 100 * line["val"]["t2i_r1"])
            for line in jsonl(work / "runs" / f"{run}.jsonl")
            if "val" in line
        ]
        if points:
            curves.plot(*zip(*points, strict=True), marker="o", label=LABELS[run])
    curves.set_xlabel("training step")
    curves.set_ylabel("text→image R@1 (%)")
    curves.set_title("Held-out R@1 while training")
    curves.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(work / "results.png", dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("work", type=Path)
    work = parser.parse_args().work
    truth = {r["key"]: r for r in jsonl(work / "truth.jsonl")}
    line, metrics = headline(work)
    compare = (work / "compare.txt").read_text().rstrip()
    sections = [
        "# VeCLIP in miniature: results",
        line,
        f"```\n{compare}\n```",
        "## Which ideas pay",
        rows(work, metrics),
        "## Curation",
        curation(work, truth),
        "## Captions",
        captions(work, truth),
        "## Step times",
        timings(work),
    ]
    (work / "results.md").write_text("\n\n".join(sections) + "\n")
    plot(work, metrics)


if __name__ == "__main__":
    main()
