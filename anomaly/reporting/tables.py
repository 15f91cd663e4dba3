"""The report's tables: one row per run and category, and the mean ± std over seeds of each group."""

from __future__ import annotations

import csv
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from anomaly.reporting.runs import Run
from anomaly.utils.atomic import atomic_open

KEYS = ("method", "data", "setting", "category")


def run_rows(runs: Sequence[Run], parameters: Sequence[str]) -> list[dict[str, Any]]:
    """One row per run and category (plus the run's mean when it covers several categories, and the value
    pooled over them for one unified model)."""
    rows = []
    for run in runs:
        groups = dict(run.categories)
        if len(groups) > 1:
            groups["mean"] = run.mean  # the engine's one mean (anomaly.metrics.mean_over_categories)
            if run.pooled:
                groups["pooled"] = run.pooled
        for category, values in groups.items():
            fit_s, test_s = run.times(category) if category not in ("mean", "pooled") else _total(run)
            rows.append({"run": run.folder.name, "method": run.method, "data": run.data, "setting": run.setting,
                         "category": category, **{p: run.overrides.get(p, "") for p in parameters},
                         "seed": run.seed, **{m: values.get(m) for m in metric_names(runs)},
                         "fit_s": fit_s, "test_s": test_s})
    return rows


def grouped_rows(rows: Sequence[dict[str, Any]], parameters: Sequence[str], metrics: Sequence[str]) -> list[dict[str, Any]]:
    """Rows grouped on method, data, setting, category and the swept parameters: ``n`` seeds, mean and
    sample std of every metric (std empty for one seed)."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in (*KEYS, *parameters)), []).append(row)
    out = []
    for key, members in groups.items():
        entry: dict[str, Any] = dict(zip((*KEYS, *parameters), key, strict=True))
        entry["n"] = len(members)
        entry["seeds"] = " ".join(str(m["seed"]) for m in members)
        for metric in metrics:
            values = [float(m[metric]) for m in members if m[metric] is not None and not math.isnan(float(m[metric]))]
            entry[metric] = statistics.fmean(values) if values else None
            entry[f"{metric}_std"] = statistics.stdev(values) if len(values) > 1 else None
        out.append(entry)
    return out


def metric_names(runs: Sequence[Run]) -> list[str]:
    """The metrics any run reports, in the order its metrics.json lists them (the project's order)."""
    return list(dict.fromkeys(m for run in runs for values in run.categories.values() for m in values))


def write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """Rows as CSV (the first row's columns), written atomically."""
    with atomic_open(path, "w") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else [], lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def markdown(rows: Sequence[dict[str, Any]], columns: Sequence[str], std: bool = False) -> str:
    """A Markdown table of ``columns``; with ``std``, metric cells read ``mean ± std``."""
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    for row in rows:
        cells = []
        for column in columns:
            value = row.get(column)
            spread = row.get(f"{column}_std") if std else None
            cells.append(_cell(value) + (f" ± {spread:.4f}" if spread is not None else ""))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None or value == "":
        return "—"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 100 else f"{value:.1f}"
    return str(value)


def _total(run: Run) -> tuple[float | None, float | None]:
    fits = [t.get("fit_s") for t in run.timing.values() if t.get("fit_s") is not None]
    tests = [t.get("test_s") for t in run.timing.values() if t.get("test_s") is not None]
    return (round(sum(fits), 3) if fits else None), (round(sum(tests), 3) if tests else None)
