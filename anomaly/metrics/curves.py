"""Metric values from threshold groups, streamed in order of decreasing score.

A threshold group is a set of samples with one score (exact mode) or one bin (binned mode): ``p``
positives, ``q`` negatives, region weight ``w`` (the sum of ``1 / |region|`` over its positive
pixels), and the cumulative ``tp``/``fp`` of all samples at or above it. Groups without positives
may be left out: they only add false positives, which the next group's ``fp`` includes. Then,
with ``P`` positives, ``N`` negatives and ``R`` regions:

- AUROC: ``(2 * sum p * (N - fp) + sum p * q) / (2 N P)`` (pairs ranked right, ties one half; as
  the trapezoid of ``sklearn.metrics.roc_auc_score``), summed in exact integer arithmetic;
- AP: ``sum p * tp / (tp + fp) / P`` (``sklearn.metrics.average_precision_score``);
- F1-max: ``max 2 tp / (tp + fp + P)`` (F1 only grows at groups with positives);
- AUPRO: see :mod:`anomaly.metrics.aupro`.
"""

from __future__ import annotations

from collections.abc import Collection

import numpy as np

from anomaly.metrics.aupro import ProArea
from anomaly.metrics.points import CurvePoints

CURVE_NAMES: tuple[str, ...] = ("auroc", "ap", "f1max", "aupro")


class CurveAccumulator:
    """Turns threshold groups into AUROC, AP, F1-max and AUPRO.

    Args:
        names: which of ``CURVE_NAMES`` to compute.
        positives: number of positive samples (> 0).
        negatives: number of negative samples (> 0).
        regions: number of ground-truth regions (> 0 if ``"aupro"`` is in ``names``).

    Example:
        >>> acc = CurveAccumulator(("auroc", "ap"), positives=2, negatives=2)
        >>> one = np.array([1])
        >>> acc.add(p=one, q=0 * one, tp=one, fp=0 * one)  # highest score: a positive
        >>> acc.add(p=one, q=one, tp=2 * one, fp=2 * one)  # a positive tied with a negative, below one negative
        >>> acc.result()
        {'auroc': 0.625, 'ap': 0.75}
    """

    def __init__(self, names: Collection[str], positives: int, negatives: int, regions: int = 0) -> None:
        unknown = set(names) - set(CURVE_NAMES)
        if unknown:
            raise ValueError(f"unknown curve metrics {sorted(unknown)}; choose from {CURVE_NAMES}")
        self.names = tuple(n for n in CURVE_NAMES if n in names)
        self.positives, self.negatives, self.regions = positives, negatives, regions
        self._auc2 = 0  # 2 * AUROC * P * N, exact
        self._integer_auc = 2 * positives * negatives < 2**62
        self._ap = 0.0
        self._f1 = 0.0
        self.f1_threshold = float("nan")  # the score of the F1-optimal group (decide score >= it)
        self._pro = ProArea(negatives, regions) if "aupro" in self.names else None
        self.points = CurvePoints(positives, negatives, regions, pro="aupro" in self.names)  # for plots

    def add(self, p: np.ndarray, q: np.ndarray, tp: np.ndarray, fp: np.ndarray, w: np.ndarray | None = None,
            score: np.ndarray | None = None) -> None:
        """Append groups (int64 arrays, highest score first; ``w`` float64, needed for AUPRO; ``score``
        the lowest score of each group, for :attr:`f1_threshold`)."""
        if p.size == 0:
            return
        if "auroc" in self.names:
            if self._integer_auc:
                self._auc2 += 2 * int(np.dot(p, self.negatives - fp)) + int(np.dot(p, q))
            else:  # beyond 2**62 pairs: float64 (relative error ~1e-16)
                pf = p.astype(np.float64)
                self._auc2 += 2 * float(np.dot(pf, self.negatives - fp)) + float(np.dot(pf, q))
        if "ap" in self.names or "f1max" in self.names:
            samples = tp + fp
            if "ap" in self.names:
                self._ap += float(np.dot(p, tp / samples))
            if "f1max" in self.names:
                samples += self.positives
                f1 = tp / samples
                best = int(np.argmax(f1))
                if 2 * float(f1[best]) > self._f1:
                    self._f1 = 2 * float(f1[best])
                    if score is not None:
                        self.f1_threshold = float(score[best])
        if "aupro" in self.names:
            if w is None:
                raise ValueError("AUPRO needs the region weight of each group")
            self._pro.add(q, fp, w)
        self.points.add(p, q, tp, fp, w)

    @property
    def finished(self) -> bool:
        """No later (lower-scored) group can change the requested metrics (AUPRO alone, past FPR 0.3)."""
        return self.names == ("aupro",) and self._pro is not None and self._pro.done

    def result(self) -> dict[str, float]:
        """The requested metrics, after the last group."""
        values: dict[str, float] = {}
        if "auroc" in self.names:
            values["auroc"] = self._auc2 / (2 * self.positives * self.negatives)
        if "ap" in self.names:
            values["ap"] = self._ap / self.positives
        if "f1max" in self.names:
            values["f1max"] = self._f1
        if "aupro" in self.names:
            values["aupro"] = self._pro.normalised()
        return {name: float(values[name]) for name in self.names}
