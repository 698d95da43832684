"""Results as tables: one run on stderr, several side by side (`vecap eval --compare`).

Results are clip_benchmark's JSON (`dataset`, `model`, `pretrained`, `task`,
`metrics`), so its own result files compare here too. Values print as
percentages, the way VeCLIP's and CLIP's tables read.
"""

from __future__ import annotations

import math
import os
import re

import orjson

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
    table = Table(title=title, title_justify="left")
    table.add_column("metric")
    table.add_column("%", justify="right")
    metrics = result.get("metrics", {})
    for name in sorted(metrics, key=_sort_key):
        table.add_row(metric_label(name), _pct(metrics[name]))
    return table


def load_results(paths: list[str]) -> list[tuple[str, dict]]:
    """(label, result) per result: a file holds one JSON object, a list, or JSON lines."""
    runs = []
    for path in paths:
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as err:
            raise VecapError(f"cannot read '{path}': {err.strerror}") from None
        try:
            parsed = orjson.loads(data)
            results = parsed if isinstance(parsed, list) else [parsed]
        except orjson.JSONDecodeError:
            try:
                results = [orjson.loads(line) for line in data.splitlines() if line.strip()]
            except orjson.JSONDecodeError as err:
                raise VecapError(f"'{path}' is not a result JSON ({err})") from None
        label = os.path.splitext(os.path.basename(path))[0]
        for n, result in enumerate(results):
            if not isinstance(result, dict) or not isinstance(result.get("metrics"), dict):
                raise VecapError(f"'{path}' is not a result JSON: no 'metrics' object")
            runs.append((label if len(results) == 1 else f"{label}[{n}]", result))
    return runs


def compare_table(runs: list[tuple[str, dict]]):
    """Metrics as rows (grouped by dataset and task), runs as columns, deltas to the first run."""
    from rich.table import Table

    rows: dict[tuple[str, str], list[str]] = {}
    for _, result in runs:
        group = rows.setdefault((str(result.get("dataset")), str(result.get("task"))), [])
        group += [m for m in result["metrics"] if m not in group]
    table = Table(title_justify="left")
    table.add_column("dataset · task")
    table.add_column("metric")
    for n, (label, _) in enumerate(runs):
        table.add_column(label if n == 0 else f"{label} (Δ)", justify="right")
    for (dataset, task), names in rows.items():
        for i, name in enumerate(sorted(names, key=_sort_key)):
            cells = [_cell(result, dataset, task, name, runs[0][1]) for _, result in runs]
            table.add_row(f"{dataset} · {task}" if i == 0 else "", metric_label(name), *cells)
        table.add_section()
    return table


def _value(result: dict, dataset: str, task: str, name: str):
    if str(result.get("dataset")) != dataset or str(result.get("task")) != task:
        return None
    value = result["metrics"].get(name)
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None


def _cell(result: dict, dataset: str, task: str, name: str, first: dict) -> str:
    value = _value(result, dataset, task, name)
    if value is None:
        return "–"
    text = _pct(value)
    base = _value(first, dataset, task, name)
    if result is first or base is None or math.isnan(value) or math.isnan(base):
        return text
    delta = 100 * (value - base)
    color = "green" if delta > 0 else "red" if delta < 0 else "dim"
    return f"{text} [{color}]({delta:+.2f})[/{color}]"
