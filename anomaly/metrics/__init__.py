"""Exact, fast, bounded-memory anomaly detection metrics that survive DDP.

``AnomalyMetrics`` is what the base module uses: per category, mean over categories and pooled
values of ``METRIC_NAMES``. The per-level ``torchmetrics`` metrics (``ImageMetrics``,
``PixelMetrics``) and the one-metric classes (``PixelAUPRO`` etc.) work on their own as well.

Example:
    >>> import torch
    >>> m = AnomalyMetrics(categories=["bottle"], metrics=METRIC_NAMES)
    >>> mask = torch.zeros(2, 1, 8, 8); mask[1, :, 2:5, 2:5] = 1
    >>> m.update(["bottle", "bottle"], mask + 0.1 * torch.rand(2, 1, 8, 8), torch.tensor([0.2, 0.8]),
    ...          mask, torch.tensor([0, 1]))
    >>> m.compute()["bottle"]["pixel_aupro"]
    1.0
"""

from anomaly.metrics.base import CurveMetric
from anomaly.metrics.checks import MetricInputError
from anomaly.metrics.collection import MEAN, POOLED, AnomalyMetrics, mean_over_categories
from anomaly.metrics.evaluation import Evaluation
from anomaly.metrics.image import ImageAP, ImageAUROC, ImageF1Max, ImageMetrics
from anomaly.metrics.names import (
    DEFAULT_BINS,
    FPR_LIMIT,
    IMAGE_METRIC_NAMES,
    METRIC_NAMES,
    MODES,
    PIXEL_METRIC_NAMES,
)
from anomaly.metrics.pixel import PixelAP, PixelAUPRO, PixelAUROC, PixelF1Max, PixelMetrics

__all__ = [
    "DEFAULT_BINS",
    "FPR_LIMIT",
    "IMAGE_METRIC_NAMES",
    "MEAN",
    "METRIC_NAMES",
    "MODES",
    "PIXEL_METRIC_NAMES",
    "POOLED",
    "AnomalyMetrics",
    "CurveMetric",
    "Evaluation",
    "ImageAP",
    "ImageAUROC",
    "ImageF1Max",
    "ImageMetrics",
    "MetricInputError",
    "PixelAP",
    "PixelAUPRO",
    "PixelAUROC",
    "PixelF1Max",
    "PixelMetrics",
    "mean_over_categories",
]
