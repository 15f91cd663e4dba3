"""The ROC/PRO points the metrics keep for plots: the same curve as sklearn's, bounded in size."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score, roc_curve

from anomaly.metrics import AnomalyMetrics


def on_polyline(point: tuple[float, float], x: np.ndarray, y: np.ndarray, tol: float = 1e-5) -> bool:
    """Whether ``point`` lies on a segment of the polyline through ``(x, y)``."""
    px, py = point
    for x0, y0, x1, y1 in zip(x[:-1], y[:-1], x[1:], y[1:], strict=True):
        if x0 - tol <= px <= x1 + tol:
            low, high = (y0, y1) if x1 - x0 < tol else ((y0 + (y1 - y0) * (px - x0) / (x1 - x0)),) * 2
            if min(low, high) - tol <= py <= max(low, high) + tol:
                return True
    return False


def test_image_roc_points_trace_sklearns_curve() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    scores = np.round(rng.normal(labels * 0.8, 1.0), 1)  # ties included
    metrics = AnomalyMetrics(["a"], metrics=("image_auroc",))
    metrics.update(["a"] * 200, None, torch.tensor(scores), None, torch.tensor(labels))
    values = metrics.compute()
    points = metrics.curves["a"]["image_roc"]
    x, y = np.array(points["x"]), np.array(points["y"])
    assert np.all(np.diff(x) >= 0) and np.all(np.diff(y) >= 0) and (x[0], y[0], x[-1], y[-1]) == (0, 0, 1, 1)
    assert np.trapezoid(y, x) == pytest.approx(values["a"]["image_auroc"], abs=1e-6)
    assert np.trapezoid(y, x) == pytest.approx(roc_auc_score(labels, scores), abs=1e-6)
    fpr, tpr, _ = roc_curve(labels, scores)  # its corners (collinear points dropped)
    for vertex in zip(fpr, tpr, strict=True):  # every threshold of sklearn's curve lies on our curve
        assert on_polyline(vertex, x, y), vertex


def test_pixel_curves_stay_bounded_and_pro_reaches_the_aupro() -> None:
    torch.manual_seed(0)
    mask = torch.zeros(8, 1, 128, 128)
    mask[:, :, 40:70, 50:90] = 1
    maps = mask + 0.8 * torch.rand(8, 1, 128, 128)  # 131,072 pixels, nearly all scores distinct
    metrics = AnomalyMetrics(["a"], metrics=("pixel_auroc", "pixel_aupro"))
    metrics.update(["a"] * 8, maps, None, mask, None)
    values = metrics.compute()["a"]
    roc, pro = metrics.curves["a"]["pixel_roc"], metrics.curves["a"]["pixel_pro"]
    assert len(roc["x"]) <= 4 * 256 + 2 and len(pro["x"]) == len(roc["x"])
    x, y = np.array(roc["x"]), np.array(roc["y"])
    assert np.trapezoid(y, x) == pytest.approx(values["pixel_auroc"], abs=2e-3)  # decimated, still the curve
    px, py = np.array(pro["x"]), np.array(pro["y"])
    inside = px <= 0.3
    area = np.trapezoid(np.append(py[inside], np.interp(0.3, px, py)), np.append(px[inside], 0.3)) / 0.3
    assert area == pytest.approx(values["pixel_aupro"], abs=2e-2)
