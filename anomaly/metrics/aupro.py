"""AUPRO: the area under PRO(FPR) for FPR in [0, 0.3], divided by 0.3 (MVTec AD evaluation code).

PRO at a threshold is the mean over all ground-truth regions (connected components of every
image's mask) of the fraction of the region scored at or above the threshold; FPR is the fraction
of normal pixels scored at or above it. Sorting all pixels by score once, each anomalous pixel of a
region ``r`` adds ``1 / (|r| * #regions)`` to PRO and each normal pixel ``1 / #normal`` to FPR, so
the curve is a cumulative sum (see :mod:`anomaly.metrics.exact`). The curve starts at (0, 0), joins
the points of consecutive distinct thresholds with straight lines (PRO clipped to 1 against
rounding), and is cut at FPR = 0.3 with the PRO there linearly interpolated, exactly as
``trapezoid(..., x_max=0.3)`` of the MVTec AD code.
"""

from __future__ import annotations

import numpy as np

from anomaly.metrics.names import FPR_LIMIT


class ProArea:
    """The AUPRO of threshold groups fed in order of decreasing score.

    Only groups holding anomalous pixels move PRO. Before such a group ``g`` the curve runs
    horizontally from the previous group's false positives to ``fp_g - q_g`` (the normal pixels
    scored above it), then straight to ``(fp_g, PRO_g)`` across the ``q_g`` normal pixels tied with
    it; so the area needs no point-by-point curve.

    Args:
        negatives: number of normal pixels (> 0).
        regions: number of ground-truth regions (> 0).
        limit: the FPR where the integration stops.

    Example:
        >>> area = ProArea(negatives=10, regions=1)
        >>> area.add(q=np.array([1]), fp=np.array([2]), w=np.array([1.0]))  # region tied with 1 of 2 normal pixels
        >>> round(area.normalised(), 6)  # (0.1 * 0 + 0.1 * 0.5 + 0.1 * 1) / 0.3
        0.5
    """

    def __init__(self, negatives: int, regions: int, limit: float = FPR_LIMIT) -> None:
        self.negatives, self.regions, self.limit = negatives, regions, limit
        self._cut = limit * negatives  # the limit in false positives
        self._fp, self._pro = 0, 0.0  # the last point: false positives, summed region weights
        self._area = 0.0  # in false positives x PRO
        self.done = False

    def add(self, q: np.ndarray, fp: np.ndarray, w: np.ndarray) -> None:
        """Append groups: tied normal pixels ``q``, cumulative ``fp`` (int64), region weights ``w``."""
        if self.done:  # past the limit nothing matters any more
            return
        inside = int(np.searchsorted(fp, self._cut, side="right"))  # groups ending within the limit
        q, fp, w = q[:inside + 1], fp[:inside + 1], w[:inside + 1]  # and the one that crosses it
        pro = self._pro + np.cumsum(w)
        y = np.minimum(pro / self.regions, 1.0)
        y_prev = np.concatenate(([min(self._pro / self.regions, 1.0)], y[:-1]))
        fp_prev = np.concatenate(([self._fp], fp[:-1]))
        start = fp - q  # where the group's own (sloped) segment starts
        self._area += float(np.dot(start[:inside] - fp_prev[:inside], y_prev[:inside]))
        self._area += 0.5 * float(np.dot(q[:inside], y_prev[:inside] + y[:inside]))
        if inside < fp.size:
            k = inside
            self._area += (min(start[k], self._cut) - fp_prev[k]) * y_prev[k]
            if start[k] < self._cut:
                y_cut = y_prev[k] + (y[k] - y_prev[k]) * (self._cut - start[k]) / q[k]
                self._area += 0.5 * (self._cut - start[k]) * (y_prev[k] + y_cut)
            self.done = True
        self._fp, self._pro = int(fp[-1]), float(pro[-1])

    def normalised(self) -> float:
        """The area up to FPR ``limit`` divided by ``limit`` (1.0 for a perfect detector)."""
        area = self._area
        if not self.done:  # the curve ends with a horizontal run to (1, PRO of all pixels)
            area += (self._cut - self._fp) * min(self._pro / self.regions, 1.0)
        return area / self.negatives / self.limit
