"""Report and logger figures (matplotlib, off-screen): ROC/PRO curves, metric vs parameter, bar charts."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

FPR_LIMIT = 0.3  # the PRO curve's integration limit (anomaly.metrics.names.FPR_LIMIT; not imported: no torch here)
CURVE_TITLES = {"image_roc": ("image ROC", "FPR", "TPR"), "pixel_roc": ("pixel ROC", "FPR", "TPR"),
                "pixel_pro": (f"pixel PRO (FPR ≤ {FPR_LIMIT})", "FPR", "PRO")}


def curve_figure(title: str, curves: Mapping[str, Mapping[str, Mapping[str, Sequence[float]]]]) -> Figure:
    """One panel per curve kind (``image_roc``, ``pixel_roc``, ``pixel_pro``), one line per label.

    Args:
        title: the figure's title (e.g. the category).
        curves: label -> kind -> ``{"x": [...], "y": [...]}`` (as ``curves.json`` holds them).
    """
    kinds = [k for k in CURVE_TITLES if any(k in c for c in curves.values())]
    fig, axes = plt.subplots(1, max(1, len(kinds)), figsize=(4.2 * max(1, len(kinds)), 4), squeeze=False)
    for ax, kind in zip(axes[0], kinds, strict=False):
        name, xlabel, ylabel = CURVE_TITLES[kind]
        for label, by_kind in curves.items():
            if kind in by_kind:
                ax.plot(by_kind[kind]["x"], by_kind[kind]["y"], label=label, linewidth=1.2)
        if kind == "pixel_pro":
            ax.set_xlim(0, FPR_LIMIT)
        else:
            ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=0.8)
        ax.set(title=name, xlabel=xlabel, ylabel=ylabel, ylim=(0, 1.01))
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7, loc="lower right")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def parameter_figure(parameter: str, points: Mapping[str, Mapping[str, Sequence[tuple[Any, float]]]]) -> Figure:
    """Metric against one swept parameter: one panel per metric, one line per group (a category, with the
    other settings that differ), one dot per run and the mean over a group's runs (seeds) at each value.

    Args:
        parameter: the swept key (x axis).
        points: metric -> line label -> ``(parameter value, metric value)`` per run.
    """
    metrics = list(points)
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 3.2), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        xs = [x for line in points[metric].values() for x, _ in line]
        numeric = all(_is_number(x) for x in xs)
        labels = sorted({str(x) for x in xs}, key=lambda v: float(v) if numeric else v)
        position = {v: (float(v) if numeric else i) for i, v in enumerate(labels)}
        for name, line in points[metric].items():
            at = [v for v in labels if any(str(x) == v for x, _ in line)]
            means = [np.mean([y for x, y in line if str(x) == v]) for v in at]
            drawn = ax.plot([position[v] for v in at], means, linewidth=1, marker=".", label=name)
            ax.scatter([position[str(x)] for x, _ in line], [y for _, y in line], s=12, alpha=0.4,
                       color=drawn[0].get_color())
        if not numeric:
            ax.set_xticks(range(len(labels)), labels, rotation=30, fontsize=7)
        ax.set(title=metric, xlabel=parameter)
        ax.grid(alpha=0.3)
    if any(len(lines) > 1 for lines in points.values()):
        axes[0][0].legend(fontsize=6)
    fig.tight_layout()
    return fig


def bar_figure(metrics: Sequence[str], values: Mapping[str, Mapping[str, Mapping[str, tuple[float, float]]]],
               spread: Mapping[str, str] | None = None) -> Figure:
    """Per-category bars comparing methods, one panel per metric, with ± std error bars.

    Args:
        metrics: the panels.
        values: metric -> method -> category -> ``(mean, std)``.
        spread: method -> what its error bars are a spread over ("seeds", "seeds and model.lr" ...), in the legend.
    """
    spread = spread or {}
    fig, axes = plt.subplots(len(metrics), 1, figsize=(8, 2.8 * len(metrics)), squeeze=False)
    for ax, metric in zip(axes[:, 0], metrics, strict=True):
        methods = list(values.get(metric, {}))
        categories = sorted({c for m in methods for c in values[metric][m]})
        width = 0.8 / max(1, len(methods))
        for i, method in enumerate(methods):
            pairs = [values[metric][method].get(c, (np.nan, 0.0)) for c in categories]
            label = f"{method} (± std over {spread[method]})" if method in spread else method
            ax.bar(np.arange(len(categories)) + i * width, [p[0] for p in pairs], width,
                   yerr=[p[1] for p in pairs], label=label, capsize=2)
        ax.set_xticks(np.arange(len(categories)) + width * (len(methods) - 1) / 2, categories, fontsize=8)
        ax.set(title=metric, ylim=(0, 1.05))
        ax.legend(fontsize=7)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def save(fig: Figure, path: Path) -> Path:
    """Write ``fig`` as PNG (parent folders created) and close it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def to_array(fig: Figure) -> np.ndarray:
    """``fig`` as an H×W×3 uint8 array (for loggers), then closed."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    plt.close(fig)
    buffer.seek(0)
    return (plt.imread(buffer)[..., :3] * 255).astype(np.uint8)


def _is_number(value: Any) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True
