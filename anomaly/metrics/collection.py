"""AnomalyMetrics: every requested metric per category, as the mean over categories, and pooled."""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import ExitStack
from typing import Any

from torch import Tensor, nn
from torchmetrics.utilities import rank_zero_warn

from anomaly.metrics.checks import MetricInputError
from anomaly.metrics.evaluation import Evaluation, evaluate
from anomaly.metrics.image import ImageMetrics
from anomaly.metrics.names import (
    DEFAULT_BINS,
    DEFAULT_TOLERANCE,
    IMAGE_METRIC_NAMES,
    METRIC_NAMES,
    PIXEL_METRIC_NAMES,
    Mode,
)
from anomaly.metrics.pixel import PixelMetrics

MEAN, POOLED = "mean", "pooled"
Results = dict[str, dict[str, float | None]]


class AnomalyMetrics(nn.Module):
    """Per-category image and pixel metrics, their mean over categories, and their pooled value.

    Holds one :class:`ImageMetrics` and one :class:`PixelMetrics` per category (only for the levels
    that have requested metrics), so every DDP process holds the same states even for categories
    it never sees. ``pooled`` evaluates the union of all categories' samples in one curve; it is
    not the mean of the per-category values, and users of the multi-class protocol need both.
    Pooled values come from the per-category states (in exact mode their sorted keys are merged
    bucket by bucket), so pooling holds no second copy of the data.

    Undefined values (a category without anomalous or without normal test images, all-zero masks,
    a category never seen) are ``None``; ``reasons[group][metric]`` says why and a warning lists
    them. A mean over categories is ``None`` when any category is undefined (a mean over a subset
    would not be comparable). In binned mode ``error_bounds[group][metric]`` holds each value's
    certified worst-case distance from exact mode.

    Args:
        categories: every category that may appear in ``update`` (fixed, so DDP states agree).
        metrics: which of ``METRIC_NAMES`` to compute; without pixel metrics no map or mask is needed.
        mode: ``"exact"`` (default; for final numbers) or ``"binned"`` (memory bounded by ``bins``).
        bins: histogram bins per category and level in binned mode.
        pooled: also compute the pooled values (skipped with one category: they equal it).
        tolerance: warn when a binned error bound exceeds this.
        **metric_kwargs: passed to every ``torchmetrics.Metric``.

    Example:
        >>> import torch
        >>> m = AnomalyMetrics(["bottle", "screw"], metrics=("image_auroc",))
        >>> m.update(["bottle", "screw"], None, torch.tensor([0.9, 0.1]), None, torch.tensor([1, 0]))
        >>> m.compute()["bottle"]["image_auroc"] is None  # bottle has no normal image
        True
    """

    def __init__(
        self,
        categories: Sequence[str],
        metrics: Sequence[str] = METRIC_NAMES,
        mode: Mode = "exact",
        bins: int = DEFAULT_BINS,
        pooled: bool = True,
        tolerance: float = DEFAULT_TOLERANCE,
        **metric_kwargs: Any,
    ) -> None:
        super().__init__()
        self.categories = [str(c) for c in categories]
        if not self.categories or len(set(self.categories)) != len(self.categories):
            raise MetricInputError(f"categories must be a non-empty list of distinct names, got {self.categories}")
        if {MEAN, POOLED} & set(self.categories):
            raise MetricInputError(f"{MEAN!r} and {POOLED!r} are result groups and cannot be category names")
        unknown = sorted(set(metrics) - set(METRIC_NAMES))
        if unknown or not metrics:
            raise MetricInputError(f"unknown metrics {unknown or 'none requested'}; choose from {METRIC_NAMES}")
        self.metrics = tuple(m for m in METRIC_NAMES if m in metrics)
        self.mode, self.pooled, self.tolerance = mode, pooled, tolerance
        kwargs = {"mode": mode, "bins": bins, "tolerance": tolerance, **metric_kwargs}
        image = [m for m in self.metrics if m in IMAGE_METRIC_NAMES]
        pixel = [m for m in self.metrics if m in PIXEL_METRIC_NAMES]
        self.image = nn.ModuleList([ImageMetrics(image, **kwargs) for _ in self.categories]) if image else None
        self.pixel = nn.ModuleList([PixelMetrics(pixel, **kwargs) for _ in self.categories]) if pixel else None
        self._index = {c: i for i, c in enumerate(self.categories)}
        self._batches = 0
        self.reasons: dict[str, dict[str, str]] = {}
        self.error_bounds: dict[str, dict[str, float]] = {}
        self.thresholds: dict[str, dict[str, float]] = {}  # group -> F1-max metric -> its optimal threshold
        self.curves: dict[str, dict[str, dict[str, list[float]]]] = {}  # group -> "image_roc"... -> points

    def update(
        self,
        categories: Sequence[str],
        anomaly_map: Tensor | None,
        score: Tensor | None,
        mask: Tensor | None,
        label: Tensor | None,
        batch: str | int | None = None,
    ) -> None:
        """Add one batch.

        Args:
            categories: the category of each image (length B).
            anomaly_map: B×1×H×W float maps (only needed for pixel metrics).
            score: B image scores (only needed for image metrics).
            mask: B×1×H×W ground truth in {0, 1} (only needed for pixel metrics).
            label: B image labels, 0 normal / 1 anomalous (only needed for image metrics).
            batch: how error messages name this batch (default: its number since the last reset).
        """
        name = self._batches if batch is None else batch
        self._batches += 1
        categories = [str(c) for c in categories]
        where = f"batch {name} (categories: {', '.join(sorted(set(categories)))})"
        unknown = sorted(set(categories) - set(self._index))
        if unknown:
            raise MetricInputError(f"{where}: unknown categories {unknown}; the metrics know {self.categories}.")
        needed = {"score": score, "label": label} if self.image is not None else {}
        if self.pixel is not None:
            needed.update(anomaly_map=anomaly_map, mask=mask)
        for key, value in needed.items():
            if value is None or value.shape[0] != len(categories):
                got = "nothing" if value is None else f"{value.shape[0]} rows"
                raise MetricInputError(f"{where}: {key} must have one row per image ({len(categories)}), got {got}.")
        for category, rows in _group(categories).items():
            index = self._index[category]
            here = f"{where}, category {category}"
            if self.image is not None:
                self.image[index].update(_rows(score, rows), _rows(label, rows), where=here)
            if self.pixel is not None:
                self.pixel[index].update(_rows(anomaly_map, rows), _rows(mask, rows), where=here)

    def compute(self) -> Results:
        """``{category: {metric: value}, "mean": {...}, "pooled": {...}}`` with float or ``None`` values."""
        levels = [level for level in (self.image, self.pixel) if level is not None]
        per_group: dict[str, list[Evaluation]] = {}
        with ExitStack() as stack:
            for level in levels:
                for metric in level:
                    stack.enter_context(metric.sync_context(dist_sync_fn=metric.dist_sync_fn,
                                                            should_sync=metric.sync_on_compute))
            for index, category in enumerate(self.categories):
                per_group[category] = [evaluate([level[index]]) for level in levels]
            if self.pooled and len(self.categories) > 1:
                per_group[POOLED] = [evaluate(list(level)) for level in levels]
        if self.pooled and len(self.categories) == 1:
            per_group[POOLED] = per_group[self.categories[0]]
        results: Results = {}
        self.reasons, self.error_bounds = {}, {}
        self.thresholds = {group: {k: v for e in evaluations for k, v in e.thresholds.items()}
                           for group, evaluations in per_group.items()}
        self.curves = {group: {k: v for e in evaluations for k, v in e.curves.items()}
                       for group, evaluations in per_group.items()}
        for group, evaluations in per_group.items():
            results[group], self.reasons[group], self.error_bounds[group] = _flatten(evaluations)
        results[MEAN], self.reasons[MEAN], self.error_bounds[MEAN] = self._mean(results)
        self._warn()
        return {group: results[group] for group in [*self.categories, MEAN, *([POOLED] if self.pooled else [])]}

    def reset(self) -> None:
        """Forget every sample (call before each evaluation epoch)."""
        for level in (self.image, self.pixel):
            for metric in level or []:
                metric.reset()
        self._batches = 0
        self.reasons, self.error_bounds = {}, {}

    def _mean(self, results: Results) -> tuple[dict[str, float | None], dict[str, str], dict[str, float]]:
        means, reasons = mean_over_categories({c: results[c] for c in self.categories}, self.metrics)
        bounds = {metric: math.fsum(self.error_bounds[c][metric] for c in self.categories) / len(self.categories)
                  for metric in self.metrics}
        return means, reasons, bounds

    def _warn(self) -> None:
        undefined = [f"{group}/{metric}: {reason}" for group, reasons in self.reasons.items()
                     for metric, reason in reasons.items() if group != MEAN]
        if undefined:
            rank_zero_warn("AnomalyMetrics: undefined values are None: " + "; ".join(undefined), UserWarning)
        loose = [f"{group}/{metric} ±{bound:.2g}" for group, bounds in self.error_bounds.items()
                 for metric, bound in bounds.items() if bound > self.tolerance]
        if loose:
            rank_zero_warn(
                f"AnomalyMetrics: binned values may be off by more than {self.tolerance:g} from exact: "
                + ", ".join(loose) + "; use more bins or mode='exact'.", UserWarning
            )


def mean_over_categories(
    per_category: Results, metrics: Sequence[str] | None = None
) -> tuple[dict[str, float | None], dict[str, str]]:
    """The mean of each metric over categories, and why a mean is undefined: a metric undefined in
    any category has no mean (a mean over a subset of categories is not comparable).

    The one mean of the project: the collection's ``mean`` group and the entry points' results over
    the categories of the ``separate`` setting both come from here.
    """
    names = list(metrics) if metrics is not None else sorted({m for values in per_category.values() for m in values})
    means: dict[str, float | None] = {}
    reasons: dict[str, str] = {}
    for metric in names:
        values = [per_category[c].get(metric) for c in per_category]
        missing = [c for c, v in zip(per_category, values, strict=True) if v is None or math.isnan(float(v))]
        if missing:
            means[metric] = None
            reasons[metric] = f"undefined for categories {missing} (a mean over fewer categories is not comparable)"
        else:
            means[metric] = math.fsum(float(v) for v in values) / len(values)
    return means, reasons


def _group(categories: list[str]) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = {}
    for row, category in enumerate(categories):
        groups.setdefault(category, []).append(row)
    return groups


def _rows(tensor: Tensor, rows: list[int]) -> Tensor:
    if len(rows) == tensor.shape[0]:
        return tensor
    return tensor[rows]


def _flatten(evaluations: list[Evaluation]) -> tuple[dict[str, float | None], dict[str, str], dict[str, float]]:
    values: dict[str, float | None] = {}
    reasons: dict[str, str] = {}
    bounds: dict[str, float] = {}
    for evaluation in evaluations:
        values.update({k: None if math.isnan(v) else v for k, v in evaluation.values.items()})
        reasons.update(evaluation.reasons)
        bounds.update(evaluation.bounds)
    return values, reasons, bounds

