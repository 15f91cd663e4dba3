"""Write a report of every run below a folder: ``report.md``, ``runs.csv``, ``summary.csv`` and PNG plots."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from anomaly.reporting.runs import Run, find_runs, swept_parameters
from anomaly.reporting.tables import KEYS, grouped_rows, markdown, metric_names, run_rows, write_csv
from anomaly.utils.atomic import atomic_open

MAX_CURVES = 12  # lines per curve plot: one per group, the first seed of each
BAR_METRICS = ("image_auroc", "pixel_auroc", "pixel_aupro")


class ReportError(ValueError):
    """A report that cannot be made from the folder given."""


def make_report(folder: Path, output: Path | None = None, plots: bool = True) -> dict[str, Any]:
    """Report the runs below ``folder`` into ``output`` (default: ``folder``); returns what was written.

    Raises:
        ReportError: ``folder`` does not exist or holds no finished run.
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise ReportError(f"{folder} does not exist; give anomaly.report a sweep folder (outputs/multirun/<date_time>) "
                          "or a runs folder (outputs/runs).")
    runs, skipped = find_runs(folder)
    if not runs:
        why = f" ({len(skipped)} unfinished or unreadable: {skipped[0][0].name}: {skipped[0][1]})" if skipped else ""
        raise ReportError(f"{folder} holds no finished run (no metrics.json below it){why}; give anomaly.report a "
                          "sweep folder (outputs/multirun/<date_time>) or a runs folder (outputs/runs).")
    output = Path(output).expanduser() if output else folder
    parameters = swept_parameters(runs)
    metrics = metric_names(runs)
    rows = run_rows(runs, parameters)
    summary = grouped_rows(rows, parameters, metrics)
    write_csv(output / "runs.csv", rows)
    write_csv(output / "summary.csv", summary)
    figures = _plots(runs, parameters, metrics, output / "plots") if plots else []
    text = _markdown(folder, runs, skipped, parameters, metrics, rows, summary, figures, output)
    with atomic_open(output / "report.md") as handle:
        handle.write(text)
    return {"runs": runs, "skipped": skipped, "rows": rows, "summary": summary, "parameters": parameters,
            "figures": figures, "markdown": output / "report.md"}


def _markdown(folder: Path, runs: Sequence[Run], skipped: Sequence[tuple[Path, str]], parameters: Sequence[str],
              metrics: Sequence[str], rows: Sequence[dict[str, Any]], summary: Sequence[dict[str, Any]],
              figures: Sequence[Path], output: Path) -> str:
    lines = [f"# Report: {folder}", "",
             f"{len(runs)} runs, {len(rows)} rows; swept: {', '.join(parameters) or 'nothing'}. "
             "Test metrics as each run's metrics.json holds them (its `selected_on` says how the tested checkpoint "
             "was chosen: on the validation split, never on test).", "",
             "## Mean ± std over seeds", "",
             markdown(summary, [*KEYS, *parameters, "n", *metrics], std=True), "",
             "## Every run", "",
             markdown(rows, ["run", *KEYS, *parameters, "seed", *metrics, "fit_s", "test_s"]), ""]
    if skipped:
        lines += ["## Skipped", "", *[f"- `{path.relative_to(folder) if path != folder else path}`: {reason}"
                                      for path, reason in skipped], ""]
    if figures:
        lines += ["## Plots", "", *[f"![{f.stem}]({f.relative_to(output).as_posix()})" for f in figures], ""]
    return "\n".join(lines)


def _plots(runs: Sequence[Run], parameters: Sequence[str], metrics: Sequence[str], where: Path) -> list[Path]:
    from anomaly.reporting.plots import bar_figure, curve_figure, parameter_figure, save

    figures = []
    for category in sorted({c for run in runs for c in run.categories}):
        lines: dict[str, Any] = {}
        for run in (r for r in runs if category in r.categories):
            label = _label(run, parameters)
            if label not in lines and len(lines) < MAX_CURVES:
                found = run.curves().get(category)
                if found:
                    lines[label] = found
        if lines:
            figures.append(save(curve_figure(category, lines), where / f"curves_{category}.png"))
    for parameter in parameters:
        points = {m: parameter_lines(runs, parameters, parameter, m) for m in metrics}
        figures.append(save(parameter_figure(parameter, points), where / f"{_safe(parameter)}.png"))
    bars = [m for m in BAR_METRICS if m in metrics]
    if bars:
        values: dict[str, dict[str, dict[str, tuple[float, float]]]] = {}
        for metric in bars:
            for method in sorted({run.method for run in runs}):
                per: dict[str, list[float]] = {}
                for run in (r for r in runs if r.method == method):
                    for category, result in run.categories.items():
                        if result.get(metric) is not None:
                            per.setdefault(category, []).append(float(result[metric]))
                values.setdefault(metric, {})[method] = {
                    c: (statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else 0.0) for c, v in per.items()}
        spread = {method: spread_over([r for r in runs if r.method == method], parameters)
                  for method in sorted({run.method for run in runs})}
        figures.append(save(bar_figure(bars, values, spread), where / "methods_by_category.png"))
    return figures


def parameter_lines(runs: Sequence[Run], parameters: Sequence[str], parameter: str,
                    metric: str) -> dict[str, list[tuple[Any, float]]]:
    """``(value of parameter, metric)`` points per line: one line per category and per setting of what else
    differs between the runs (method, data, setting, the other swept parameters), never one through several."""
    varying = [k for k in ("method", "data", "setting") if len({getattr(r, k) for r in runs}) > 1]
    others = [p for p in parameters if p != parameter]
    lines: dict[str, list[tuple[Any, float]]] = {}
    for run in runs:
        group = [str(getattr(run, k)) for k in varying]
        group += [f"{p.rsplit('.', 1)[-1]}={run.overrides.get(p, '')}" for p in others]
        for category, values in run.categories.items():
            if values.get(metric) is not None:
                lines.setdefault(" ".join([*group, category]), []).append(
                    (run.overrides.get(parameter, ""), float(values[metric])))
    return lines


def spread_over(runs: Sequence[Run], parameters: Sequence[str]) -> str:
    """What differs between ``runs`` pooled into one error bar: "seeds" only when nothing else does."""
    parts = ["seeds"] if len({str(r.seed) for r in runs}) > 1 else []
    parts += [k for k in ("data", "setting") if len({getattr(r, k) for r in runs}) > 1]
    parts += [p for p in parameters if len({r.overrides.get(p) for r in runs}) > 1]
    return " and ".join(parts) if parts else "nothing (one run)"


def _label(run: Run, parameters: Sequence[str]) -> str:
    swept = " ".join(f"{p.rsplit('.', 1)[-1]}={run.overrides[p]}" for p in parameters if p in run.overrides)
    return " ".join(part for part in (run.method, swept) if part)


def _safe(name: str) -> str:
    return "metric_vs_" + "".join(c if c.isalnum() or c in "._-" else "_" for c in name)
