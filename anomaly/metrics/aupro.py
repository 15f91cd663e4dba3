"""AUPRO: the area under PRO(FPR) for FPR in [0, 0.3], divided by 0.3 (MVTec AD evaluation code).

PRO at a threshold is the mean over all ground-truth regions (connected components of every
image's mask) of the fraction of the region scored at or above the threshold; FPR is the fraction
of normal pixels scored at or above it. Sorting all pixels by score once, each anomalous pixel of a
region ``r`` adds ``1 / (|r| * #regions)`` to PRO and each normal pixel ``1 / #normal`` to FPR, so
the curve is a cumulative sum (see :mod:`anomaly.metrics.exact`). The curve starts at (0, 0), joins
the points of consecutive distinct thresholds with straight lines, and is cut at FPR = 0.3 with the
PRO there linearly interpolated, exactly as ``trapezoid(..., x_max=0.3)`` of the MVTec AD code.
"""

from __future__ import annotations

import numpy as np

from anomaly.metrics.names import FPR_LIMIT


class LimitedTrapezoid:
    """Trapezoid area under a curve with non-decreasing x, from x = 0 up to ``limit``, fed in pieces.

    Args:
        limit: where the integration stops; the curve is interpolated linearly at ``limit``.

    Example:
        >>> area = LimitedTrapezoid(0.3)
        >>> area.add(np.array([0.1, 0.5]), np.array([1.0, 1.0]))
        >>> round(area.normalised(), 6)
        0.833333
    """

    def __init__(self, limit: float = FPR_LIMIT) -> None:
        self.limit = limit
        self.x, self.y = 0.0, 0.0  # the last point seen; the curve starts at (0, 0)
        self.area = 0.0
        self.done = False

    def add(self, x: np.ndarray, y: np.ndarray) -> None:
        """Append curve points (x non-decreasing, continuing from the previous call)."""
        if self.done or x.size == 0:
            return
        xs = np.concatenate(([self.x], x))
        ys = np.concatenate(([self.y], y))
        inside = int(np.searchsorted(x, self.limit, side="right"))  # points with x <= limit
        self.area += 0.5 * float(np.sum((xs[1:inside + 1] - xs[:inside]) * (ys[1:inside + 1] + ys[:inside])))
        if inside < x.size:
            x0, y0, x1, y1 = xs[inside], ys[inside], xs[inside + 1], ys[inside + 1]
            y_limit = y0 + (y1 - y0) * (self.limit - x0) / (x1 - x0)
            self.area += 0.5 * (y_limit + y0) * (self.limit - x0)
            self.done = True
        self.x, self.y = float(xs[-1]), float(ys[-1])

    def normalised(self) -> float:
        """The area divided by ``limit`` (1.0 for a perfect detector)."""
        return float(self.area) / self.limit
