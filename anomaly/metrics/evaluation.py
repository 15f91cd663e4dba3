"""Compute metric values from the states of one or several metrics (one category, or all: pooled)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from anomaly.metrics.binned import histogram_counts, histogram_curve, merge_histograms
from anomaly.metrics.bounds import error_bounds
from anomaly.metrics.curves import CurveAccumulator
from anomaly.metrics.exact import array_parts, merged_parts, stream
from anomaly.metrics.names import curve_name

if TYPE_CHECKING:
    from anomaly.metrics.base import CurveMetric


@dataclass
class Evaluation:
    """Metric values with, for each undefined one, the reason, and in binned mode the error bound.

    Attributes:
        values: metric name -> value (NaN where undefined).
        reasons: metric name -> why it is undefined.
        bounds: metric name -> certified worst-case |binned - exact| (0 in exact mode).
        thresholds: F1-max metric name -> the score at which F1 is maximal (flag ``score >= it``).
        curves: ``"<level>_roc"`` / ``"<level>_pro"`` -> bounded ``{"x", "y"}`` points for plots
            (:mod:`anomaly.metrics.points`); empty where the metrics are undefined.
    """

    values: dict[str, float] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)
    bounds: dict[str, float] = field(default_factory=dict)
    thresholds: dict[str, float] = field(default_factory=dict)
    curves: dict[str, dict[str, list[float]]] = field(default_factory=dict)


def evaluate(parts: Sequence[CurveMetric]) -> Evaluation:
    """Evaluate the union of the (already synchronised) states of ``parts``.

    All parts must have the same level, metrics and mode. One category is ``[metric]`` (its exact
    state is sorted in place); the pooled value over categories is the list of their metrics (the
    samples of all categories in one curve, their sorted states merged bucket by bucket).
    """
    first = parts[0]
    if any((p.level, p.metrics, p.mode) != (first.level, first.metrics, first.mode) for p in parts):
        raise ValueError("can only evaluate metrics of the same level, names and mode together")
    names = first.metrics
    curves = tuple(curve_name(n) for n in names)
    regions = sum(int(p.regions) for p in parts) if first.level == "pixel" else 0
    if first.mode == "exact":
        total = sum(p.key_count() for p in parts)
        positives = sum(int(p.positives) for p in parts)
        reasons = undefined_reasons(first.level, names, total, positives, total - positives)
        if reasons:
            return _undefined(names, reasons)
        runs = [p.sorted_keys() for p in parts]
        accumulator = CurveAccumulator(curves, positives, total - positives, regions)
        stream(array_parts(runs[0]) if len(runs) == 1 else merged_parts(runs), accumulator,
               with_pro="aupro" in curves)
        del runs
        values = accumulator.result()
        bounds = dict.fromkeys(curves, 0.0)
    else:
        hist = merge_histograms([p.hist for p in parts])
        positives, negatives = histogram_counts(hist)
        reasons = undefined_reasons(first.level, names, positives + negatives, positives, negatives)
        if reasons:
            return _undefined(names, reasons)
        curve = histogram_curve(hist)
        accumulator = CurveAccumulator(curves, positives, negatives, regions)
        accumulator.add(p=curve.p, q=curve.q, tp=curve.tp, fp=curve.fp, w=curve.w, score=curve.low)
        values = accumulator.result()
        bounds = error_bounds(curve, curves, positives, negatives, regions, values)
    return Evaluation(
        values={n: values[curve_name(n)] for n in names},
        reasons=reasons,
        bounds={n: bounds[curve_name(n)] for n in names},
        thresholds={n: accumulator.f1_threshold for n in names if curve_name(n) == "f1max"},
        curves={f"{first.level}_{kind}": points for kind, points in accumulator.points.curves().items()},
    )


def undefined_reasons(level: str, names: Sequence[str], total: int, positives: int, negatives: int) -> dict[str, str]:
    """Why each metric is undefined (all need both classes); empty if every metric is defined."""
    what = "test images" if level == "image" else "pixels"
    if total == 0:
        reason = f"no {what} were seen"
    elif positives == 0:
        reason = ("no anomalous test images (label 1)" if level == "image"
                  else "no anomalous pixels (all masks are zero)")
    elif negatives == 0:
        reason = ("no normal test images (label 0)" if level == "image"
                  else "no normal pixels (every mask pixel is anomalous)")
    else:
        return {}
    return dict.fromkeys(names, f"{reason}: the metric needs both normal and anomalous {what}")


def _undefined(names: Sequence[str], reasons: dict[str, str]) -> Evaluation:
    return Evaluation(values=dict.fromkeys(names, math.nan), reasons=reasons, bounds=dict.fromkeys(names, 0.0))
