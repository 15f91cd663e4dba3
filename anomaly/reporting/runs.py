"""Find the runs under a sweep or runs folder and read each into rows (one per category), or say why not."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from anomaly.engine.manifest import MANIFEST

# Overrides that never count as swept parameters (they are columns of their own or do not change results).
NOT_PARAMETERS = ("seed", "data.category", "resume", "data.root", "data.num_workers", "model", "data", "experiment")


@dataclass
class Run:
    """One finished run: its folder, what it was (method, data, setting, seed, overrides) and its results."""

    folder: Path
    method: str
    data: str
    setting: str
    seed: Any
    overrides: dict[str, str]
    categories: dict[str, dict[str, float | None]]
    mean: dict[str, float | None]
    pooled: dict[str, float | None]
    timing: dict[str, dict[str, float]]

    def curves(self) -> dict[str, Any]:
        """The run's ``curves.json`` (read on each call, not kept: a report holds only the curves it plots)."""
        path = self.folder / "curves.json"
        return _load(path) if path.is_file() else {}

    def times(self, category: str) -> tuple[float | None, float | None]:
        """Fit and test seconds of the unit that covered ``category`` (its own, or the unified one)."""
        unit = self.timing.get(category) or self.timing.get("all") or self.timing.get("") or {}
        return unit.get("fit_s"), unit.get("test_s")


def find_runs(folder: Path) -> tuple[list[Run], list[tuple[Path, str]]]:
    """The finished runs below ``folder`` and the skipped folders with the reason, both sorted by path."""
    folders = sorted({p.parent for name in ("metrics.json", MANIFEST) for p in folder.rglob(name)
                      if ".hydra" not in p.parts})
    runs: list[Run] = []
    skipped: list[tuple[Path, str]] = []
    for path in folders:
        try:
            run = read_run(path)
        except SkipRun as reason:
            skipped.append((path, str(reason)))
            continue
        runs.append(run)
    return runs, skipped


class SkipRun(Exception):
    """Why a folder holds no reportable run."""


def read_run(folder: Path) -> Run:
    """Read ``metrics.json`` (+ ``manifest.json``, ``curves.json``) of one run folder.

    Raises:
        SkipRun: unfinished, unreadable, or not a training run.
    """
    manifest = _load(folder / MANIFEST) if (folder / MANIFEST).is_file() else {}
    if not (folder / "metrics.json").is_file():
        status = manifest.get("status", "unknown")
        raise SkipRun(f"no metrics.json (unfinished: manifest status {status!r})")
    metrics = _load(folder / "metrics.json")
    if "checkpoints" in metrics and "method" not in metrics:
        raise SkipRun("an anomaly.evaluate re-test, not a training run")
    if not metrics.get("categories"):
        raise SkipRun("metrics.json has no per-category results")
    config = manifest.get("config") or metrics.get("config") or {}
    choices = manifest.get("choices") or {}
    method = choices.get("model") or str(metrics.get("method", "?")).rsplit(".", 1)[-1]
    data = choices.get("data") or Path(str((config.get("data") or {}).get("root", "?"))).name
    if choices.get("experiment"):
        method = f"{method} ({choices['experiment']})"
    return Run(folder=folder, method=method, data=data, setting=str(metrics.get("setting", "?")),
               seed=metrics.get("seed", config.get("seed")), overrides=_overrides(manifest.get("overrides", [])),
               categories=metrics["categories"], mean=metrics.get("mean") or {},
               pooled=metrics.get("pooled") or {},
               timing=metrics.get("timing") or {})


def swept_parameters(runs: list[Run]) -> list[str]:
    """Override keys whose value differs between runs (seed, category and paths are columns or noise)."""
    keys = sorted({k for run in runs for k in run.overrides if k not in NOT_PARAMETERS and not k.startswith("hydra")})
    return [k for k in keys if len({run.overrides.get(k) for run in runs}) > 1]


def _overrides(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        if "=" in item:
            key, value = item.split("=", 1)
            out[key.lstrip("+~")] = value
    return out


def _load(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise SkipRun(f"{path.name} is unreadable ({error})") from error
