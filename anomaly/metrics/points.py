"""ROC and PRO curve points, kept while the metrics stream their threshold groups (bounded in size).

The values (AUROC, AUPRO) are computed exactly by :class:`~anomaly.metrics.curves.CurveAccumulator`;
these points are for plots: at most ``max_points`` per call are taken (evenly over the groups), and
the kept list is halved whenever it exceeds twice that, so memory never depends on the data size.
Each group contributes its two corners: ``(fp - q, tp - p)`` where its tied samples start and
``(fp, tp)`` where they end, so the plotted curve has the right shape between groups.
"""

from __future__ import annotations

import numpy as np

MAX_POINTS = 256


class CurvePoints:
    """ROC points (FPR, TPR) and, with ``pro=True``, PRO points (FPR, PRO) of streamed groups.

    Example:
        >>> pts = CurvePoints(positives=1, negatives=1)
        >>> pts.add(p=np.array([1]), q=np.array([1]), tp=np.array([1]), fp=np.array([1]))
        >>> pts.curves()["roc"]
        {'x': [0.0, 0.0, 1.0, 1.0], 'y': [0.0, 0.0, 1.0, 1.0]}
    """

    def __init__(self, positives: int, negatives: int, regions: int = 0, pro: bool = False,
                 max_points: int = MAX_POINTS) -> None:
        self.positives, self.negatives, self.regions = positives, negatives, regions
        self.max_points = max_points
        self._roc: list[np.ndarray] = []
        self._pro: list[np.ndarray] | None = [] if pro and regions > 0 else None
        self._pro_sum = 0.0
        self._kept = 0

    def add(self, p: np.ndarray, q: np.ndarray, tp: np.ndarray, fp: np.ndarray, w: np.ndarray | None = None) -> None:
        """Take the points of groups (arrays as ``CurveAccumulator.add`` receives them)."""
        if p.size == 0:
            return
        pro = None
        if self._pro is not None and w is not None:
            pro = self._pro_sum + np.cumsum(w)
            self._pro_sum = float(pro[-1])
        pick = np.unique(np.linspace(0, p.size - 1, min(p.size, self.max_points)).astype(np.int64))
        fpr = np.stack([fp[pick] - q[pick], fp[pick]], 1).ravel() / self.negatives
        tpr = np.stack([tp[pick] - p[pick], tp[pick]], 1).ravel() / self.positives
        self._roc.append(np.stack([fpr, tpr]))
        if pro is not None:
            before = np.concatenate(([pro[0] - w[0]], pro[:-1]))
            y = np.stack([before[pick], pro[pick]], 1).ravel() / self.regions
            self._pro.append(np.stack([fpr, np.minimum(y, 1.0)]))
        self._kept += pick.size
        if self._kept > 2 * self.max_points:
            self._roc = [_halve(np.concatenate(self._roc, 1))]
            if self._pro:
                self._pro = [_halve(np.concatenate(self._pro, 1))]
            self._kept = self._roc[0].shape[1] // 2

    def curves(self) -> dict[str, dict[str, list[float]]]:
        """``{"roc": {"x", "y"}}`` from (0, 0) to (1, 1), plus ``"pro"`` when recorded (PRO clipped to 1)."""
        out = {"roc": _finish(self._roc, end=(1.0, 1.0))}
        if self._pro is not None:
            last = self._pro[-1][1, -1] if self._pro else 0.0
            out["pro"] = _finish(self._pro, end=(1.0, float(last)))
        return out


def _halve(points: np.ndarray) -> np.ndarray:
    keep = np.zeros(points.shape[1], dtype=bool)
    keep[::2] = True
    keep[-1] = True
    return points[:, keep]


def _finish(parts: list[np.ndarray], end: tuple[float, float]) -> dict[str, list[float]]:
    points = np.concatenate([np.zeros((2, 1)), *parts, np.array(end, dtype=np.float64)[:, None]], 1)
    return {"x": [round(float(v), 6) for v in points[0]], "y": [round(float(v), 6) for v in points[1]]}
