"""metrics.json (per category, mean, pooled; config, versions, seed), curves.json and the printed results table."""

from __future__ import annotations

import math
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from anomaly.utils.atomic import atomic_write_json

LIBRARIES = ("anomaly", "torch", "torchvision", "lightning", "hydra-core", "timm", "torchmetrics", "kornia",
             "albumentations", "diffusers", "numpy")


def library_versions() -> dict[str, str]:
    """Installed versions of the libraries that shape the numbers."""
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def write_metrics(path: str | Path, results: dict[str, Any]) -> None:
    """Write ``results`` plus library versions to ``path`` atomically."""
    atomic_write_json(path, {**results, "versions": library_versions()})


def write_curves(path: str | Path, curves: dict[str, Any]) -> None:
    """Write the test ROC/PRO points per category (``{group: {"image_roc"|"pixel_roc"|"pixel_pro": {"x", "y"}}}``)
    atomically; ``anomaly.report`` plots them."""
    atomic_write_json(path, curves)


def print_table(per_category: dict[str, dict[str, float | None]], extra_rows: dict[str, dict[str, float | None]],
                title: str) -> None:
    """Print one row per category plus the summary rows (mean, pooled) as a table."""
    names = sorted({name for values in [*per_category.values(), *extra_rows.values()] for name in values})
    table = Table(title=title)
    table.add_column("category")
    for name in names:
        table.add_column(name, justify="right")
    for category, values in [*per_category.items(), *extra_rows.items()]:
        table.add_row(category, *[_fmt(values.get(name)) for name in names], end_section=category == list(per_category)[-1])
    Console(width=200).print(table)


def _fmt(value: float | None) -> str:
    return "—" if value is None or math.isnan(float(value)) else f"{float(value):.4f}"
