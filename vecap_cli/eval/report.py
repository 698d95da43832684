"""Results as tables: one run on stderr, several side by side (`vecap eval --compare`).

Results are clip_benchmark's JSON (`dataset`, `model`, `pretrained`, `task`,
`metrics`, `language`), so the files its `clip_benchmark eval` writes compare
here beside vecap's: rows pair by dataset and task, clip_benchmark's `wds/NAME`
is NAME, and a language other than en is a dataset of its own. Values print as
percentages, the way VeCLIP's and CLIP's tables read.
"""

from __future__ import annotations

import json
import math
import os
import re

from vecap_cli.errors import VecapError

_ORDER = ("acc1", "acc5", "mean_per_class_recall", "text_retrieval", "image_retrieval")


def metric_label(name: str) -> str:
    match = re.fullmatch(r"(text|image)_retrieval_recall@(\d+)", name)
    if match:
        way = "image→text" if match.group(1) == "text" else "text→image"
        return f"{way} R@{match.group(2)}"
    return {"acc1": "top-1", "acc5": "top-5", "mean_per_class_recall": "mean per-class recall"}.get(
        name, name
    )


def _sort_key(name: str):
    for rank, prefix in enumerate(_ORDER):
        if name.startswith(prefix):
            match = re.search(r"@(\d+)$", name)
            return (rank, int(match.group(1)) if match else 0, name)
    return (len(_ORDER), 0, name)


def _pct(value) -> str:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return "–"
    return "n/a" if math.isnan(value) else f"{100 * value:.2f}"


def result_table(result: dict):
    from rich.table import Table

    title = f"{result.get('task', '?')} · {result.get('dataset', '?')} · {result.get('model', '?')}"
    table = Table(title=title, title_justify="left", min_width=len(title))
    table.add_column("metric")
    table.add_column("%", justify="right")
    metrics = result.get("metrics", {})
    for name in sorted(metrics, key=_sort_key):
        table.add_row(metric_label(name), _pct(metrics[name]))
    return table


def result_json(result: dict) -> bytes:
    """As clip_benchmark's `json.dump` writes it: NaN (a top-5 of fewer than 5
    classes) stays NaN, where orjson would write null."""
    return (json.dumps(result, indent=2, ensure_ascii=False) + "\n").encode()


def load_results(paths: list[str]) -> list[tuple[str, list[dict]]]:
    """(label, results) per file: one JSON object, a list of them, or JSON lines.
    The standard library parses them: clip_benchmark writes NaN, which strict JSON lacks."""
    runs = []
    for path in paths:
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as err:
            raise VecapError(f"cannot read '{path}': {err.strerror}") from None
        try:
            parsed = json.loads(data)
            results = parsed if isinstance(parsed, list) else [parsed]
        except ValueError:
            try:
                results = [json.loads(line) for line in data.splitlines() if line.strip()]
            except ValueError as err:
                raise VecapError(f"'{path}' is not a result JSON ({err})") from None
        if not results or not all(
            isinstance(r, dict) and isinstance(r.get("metrics"), dict) for r in results
        ):
            raise VecapError(f"'{path}' is not a result JSON: no 'metrics' object")
        runs.append((os.path.splitext(os.path.basename(path))[0], results))
    return runs


def compare_table(runs: list[tuple[str, list[dict]]]):
    """Metrics as rows (grouped by dataset and task), runs as columns, deltas to the first run."""
    from rich.table import Table

    groups: dict[tuple[str, str], list[str]] = {}
    for _, results in runs:
        for result in results:
            names = groups.setdefault(_group(result), [])
            names += [m for m in result["metrics"] if m not in names]
    table = Table()
    table.add_column("dataset")
    table.add_column("metric")
    for n, (label, _) in enumerate(runs):
        table.add_column(label if n == 0 else f"{label} (Δ)", justify="right")
    first = runs[0][1]
    for group, names in groups.items():
        for i, name in enumerate(sorted(names, key=_sort_key)):
            base = _value(first, group, name)
            cells = [
                _cell(_value(results, group, name), base, n > 0)
                for n, (_, results) in enumerate(runs)
            ]
            table.add_row(group[0] if i == 0 else "", metric_label(name), *cells)
        table.add_section()
    return table


def _group(result: dict) -> tuple[str, str]:
    """(dataset, task): what pairs the results of different runs."""
    dataset = str(result.get("dataset")).removeprefix("wds/")  # clip_benchmark's webdataset
    language = result.get("language") or "en"
    if language != "en":
        dataset = f"{dataset} ({language})"
    return dataset, str(result.get("task"))


def _value(results: list[dict], group: tuple[str, str], name: str) -> float | None:
    """The run's value of a metric; the last result for a dataset and task counts."""
    found = None
    for result in results:
        value = result["metrics"].get(name)
        if (
            _group(result) == group
            and isinstance(value, int | float)
            and not isinstance(value, bool)
        ):
            found = float(value)
    return found


def _cell(value: float | None, base: float | None, delta: bool) -> str:
    if value is None:
        return "–"
    text = _pct(value)
    if not delta or base is None or math.isnan(value) or math.isnan(base):
        return text
    change = 100 * (value - base)
    color = "green" if change > 0 else "red" if change < 0 else "dim"
    return f"{text} [{color}]({change:+.2f})[/{color}]"
