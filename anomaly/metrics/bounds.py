"""Certified worst-case error of binned metrics against exact mode.

Inside a bin holding several distinct scores the exact curve has points the histogram cannot
see, but they are boxed in: cumulative counts between a bin's upper edge (previous point) and its
lower edge (this point). Bounding each metric over that box gives an error bound that holds for
any arrangement of the scores inside the bins:

- AUROC: pairs of a positive and a negative in one bin count one half; the truth is 0 or 1 per
  pair, so the error is at most ``0.5 * sum(dn * dp) / (N * P)`` over mixed bins.
- AUPRO: a monotone curve through a box of width dx and height dy differs from the straight
  segment by at most ``0.5 * dx * dy`` (``dx * dy`` for the segment cut at FPR 0.3).
- AP: the precision of each hidden threshold lies between ``tp_prev / (tp_prev + fp)`` and
  ``tp / (tp + fp_prev)``; the recall it weighs is the bin's share of the positives.
- F1-max: a hidden threshold has at most ``tp`` true and at least ``fp_prev`` false positives, so
  its F1 is at most ``2 tp / (tp + fp_prev + P)``.
"""

from __future__ import annotations

from collections.abc import Collection

import numpy as np

from anomaly.metrics.binned import HistogramCurve
from anomaly.metrics.names import FPR_LIMIT


def error_bounds(
    curve: HistogramCurve, names: Collection[str], positives: int, negatives: int, regions: int, values: dict[str, float]
) -> dict[str, float]:
    """Worst-case |binned - exact| of each metric in ``names`` (the curve names, e.g. ``"auroc"``).

    Args:
        curve: the binned curve.
        names: which metrics to bound.
        positives: number of positives (> 0).
        negatives: number of negatives (> 0).
        regions: number of ground-truth regions (AUPRO).
        values: the binned values (F1-max needs its own value).
    """
    mixed = curve.mixed
    tp, fp = curve.tp.astype(np.float64), curve.fp.astype(np.float64)
    tp_prev, fp_prev = _previous(tp), _previous(fp)
    bounds: dict[str, float] = {}
    if "auroc" in names:
        bounds["auroc"] = 0.5 * float(np.sum(((fp - fp_prev) * (tp - tp_prev))[mixed])) / (positives * negatives)
    if "ap" in names:
        precision = tp / (tp + fp)
        high = _safe_ratio(tp, tp + fp_prev, 1.0)
        low = np.where(fp == 0, 1.0, _safe_ratio(tp_prev, tp_prev + fp, 0.0))
        spread = np.maximum(precision - low, high - precision)
        bounds["ap"] = float(np.sum(((tp - tp_prev) * spread)[mixed])) / positives
    if "f1max" in names:
        upper = 2 * tp / (tp + fp_prev + positives)
        best = float(upper[mixed].max()) if mixed.any() else 0.0
        bounds["f1max"] = max(0.0, best - values["f1max"])
    if "aupro" in names:
        x, y = fp / negatives, np.minimum(curve.pro / regions, 1.0)
        x_prev, y_prev = _previous(x), _previous(y)
        inside = x <= FPR_LIMIT
        crossing = (x_prev < FPR_LIMIT) & ~inside
        area = np.where(inside, 0.5 * (x - x_prev), np.where(crossing, FPR_LIMIT - x_prev, 0.0)) * (y - y_prev)
        bounds["aupro"] = float(np.sum(area[mixed])) / FPR_LIMIT
    return bounds


def _previous(values: np.ndarray) -> np.ndarray:
    return np.concatenate(([0.0], values[:-1]))


def _safe_ratio(num: np.ndarray, den: np.ndarray, fallback: float) -> np.ndarray:
    out = np.full(num.shape, fallback, dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out
