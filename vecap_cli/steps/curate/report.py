"""What a counts file says: the distribution of entry counts, the head/tail split at t,
and a log-log picture of it (MetaCLIP's Figure: counts by entry rank, t marked).

Against a `--rule metaclip2` folder (`describe_languages`), per language: its list,
its matches, its t (English's, or derived from it, or --t-per-lang) and its head
and tail at that t; the top entries named with their language."""

from __future__ import annotations

import io
import os

from vecap_cli.steps.curate.balancing import head_tail
from vecap_cli.steps.curate.counts import EntryCounts
from vecap_cli.stream.sinks import write_atomically

_BINS = (1, 10, 100, 1_000, 10_000, 100_000, 1_000_000)

# Measured by benchmarks/measure_head_kept.py: the expected kept count
# of a head entry, sum of P(keep) over the records that match it, over t.
HEAD_KEPT = "a median 1.4-2.1x t on 10k LAION texts, t = 20-100"


def _pct(part: float, whole: float) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "-"


def _records(counts: EntryCounts) -> str:
    if counts.records or not any(counts.counts):
        return f"{counts.records:,}, matched {counts.matched:,} ({_pct(counts.matched, counts.records)})"
    return "not in the file (MetaCLIP's counts)"


def describe(counts: EntryCounts, t: float, entries: list[str] | None = None, top: int = 20) -> str:
    """The report as text: totals, head/tail at t, counts by decade, the top entries."""
    split = head_tail(counts.counts, t)
    head, tail, total = split["head"], split["tail"], split["matches"]
    lines = [
        f"records counted   {_records(counts)}",
        f"entries matched   {split['entries_matched']:,} of {counts.n_entries:,}",
        f"matches           {total:,} ({total / max(counts.matched, 1):.2f} per matched record)",
        f"head (count >= t) {head['entries']:,} entries, {head['matches']:,} matches "
        f"({_pct(head['matches'], total)})   t = {t:,g}",
        f"tail              {tail['entries']:,} entries, {tail['matches']:,} matches "
        f"({_pct(tail['matches'], total)})",
        f"sum min(count, t) {split['matches_capped_at_t']:,} matches "
        f"({_pct(split['matches_capped_at_t'], total)} of them): a floor, not what "
        "balancing keeps:",
        "                  a head entry keeps about t through its own draws, plus the",
        "                  records kept through their other entries",
        f"                  ({HEAD_KEPT})",
        "",
        "count          entries    matches",
    ]
    for low, high in zip(_BINS, (*_BINS[1:], None), strict=True):
        inside = [c for c in counts.counts if c >= low and (high is None or c < high)]
        if inside:
            label = f"{low:,}+" if high is None else f"{low:,}-{high - 1:,}"
            lines.append(f"{label:<14} {len(inside):>7,} {sum(inside):>10,}")
    ranked = sorted(
        ((c, i) for i, c in enumerate(counts.counts) if c), key=lambda ci: (-ci[0], ci[1])
    )[:top]
    if ranked:
        lines += ["", "top entries     count      p_e  entry"]
        for c, i in ranked:
            name = repr(entries[i]) if entries is not None else f"#{i}"
            lines.append(f"#{i:<8} {c:>12,} {min(1.0, t / c):>8.4f}  {name}")
    return "\n".join(lines)


def describe_languages(
    counts: EntryCounts, spans: dict[str, tuple[int, int]], entries: list[str], ts, top: int = 20
) -> str:
    """The report per language (`spans`: language -> (first id, entries), `ts`: the t
    of each language with matches), then the languages added up, the top entries."""
    rows = []
    added = {"entries": 0, "matched": 0, "matches": 0, "head": 0, "head_matches": 0}
    for lang, (start, n) in spans.items():
        if lang not in ts:
            continue
        split = head_tail(counts.counts[start : start + n], ts[lang])
        rows.append((split["matches"], lang, n, split, ts[lang]))
    lines = [
        f"records counted   {_records(counts)}",
        f"languages         {len(rows):,} matched, of the {len(spans):,} with a list; each at "
        "its own t:",
        "                  English's --t, the others the t that keeps English's tail share",
        "                  (MetaCLIP 2's p_to_t), or --t-per-lang",
        "",
        "lang      entries   matched     matches           t  head entries  head share",
    ]
    for _, lang, n, split, t in sorted(rows, key=lambda row: (-row[0], row[1])):
        head = split["head"]
        lines.append(
            f"{lang:<8} {n:>8,} {split['entries_matched']:>9,} {split['matches']:>11,} "
            f"{t:>11,} {head['entries']:>13,} {_pct(head['matches'], split['matches']):>11}"
        )
        added["entries"] += n
        added["matched"] += split["entries_matched"]
        added["matches"] += split["matches"]
        added["head"] += head["entries"]
        added["head_matches"] += head["matches"]
    lines.append(
        f"{'all':<8} {added['entries']:>8,} {added['matched']:>9,} {added['matches']:>11,} "
        f"{'':>11} {added['head']:>13,} {_pct(added['head_matches'], added['matches']):>11}"
    )
    lang_of = {}
    for lang, (start, n) in spans.items():
        lang_of.update(dict.fromkeys(range(start, start + n), lang))
    ranked = sorted(
        ((c, i) for i, c in enumerate(counts.counts) if c), key=lambda ci: (-ci[0], ci[1])
    )[:top]
    if ranked:
        lines += ["", "top entries     count      p_e  lang  entry"]
        for c, i in ranked:
            lang = lang_of[i]
            p = min(1.0, ts[lang] / c)
            lines.append(f"#{i:<8} {c:>12,} {p:>8.4f}  {lang:<5} {entries[i]!r}")
    return "\n".join(lines)


def plot(
    counts: EntryCounts, t: float, path: str, spans: dict[str, tuple[int, int]] | None = None
) -> None:
    """Entry counts by rank, log-log, with t drawn across; with `spans` (metaclip2),
    one curve for each of the 8 languages with the most matches, English's t."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    ax.set_xscale("log")
    ax.set_yscale("log")
    curves = {"entry count": counts.counts}
    if spans is not None:
        own = {lang: counts.counts[start : start + n] for lang, (start, n) in spans.items()}
        curves = dict(sorted(own.items(), key=lambda kv: -sum(kv[1]))[:8])
    for label, values in curves.items():
        ranked = sorted((c for c in values if c), reverse=True)
        if ranked:
            ax.plot(range(1, len(ranked) + 1), ranked, lw=1.5, label=label)
    split = head_tail(counts.counts, t)
    if spans is None:
        ax.axhline(t, color="tab:red", ls="--", lw=1, label=f"t = {t:,g}")
        title = (
            f"{split['entries_matched']:,} entries matched; head: {split['head']['entries']:,} "
            f"entries, {100 * split['head']['share']:.1f}% of matches"
        )
    else:  # the other languages' t are in the text report
        ax.axhline(t, color="tab:red", ls="--", lw=1, label=f"English's t = {t:,g}")
        title = f"{split['entries_matched']:,} entries matched; the languages with most matches"
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("entry rank (by count)")
    ax.set_ylabel("records matching the entry")
    ax.legend()
    ax.grid(True, which="major", alpha=0.3)
    fig.tight_layout()
    # drawn in memory, then written whole: matplotlib says nothing of a full disk
    image = io.BytesIO()
    ext = os.path.splitext(path)[1].lower().lstrip(".")
    fig.savefig(image, format=ext if ext in fig.canvas.get_supported_filetypes() else "png")
    plt.close(fig)
    write_atomically(path, image.getvalue())
