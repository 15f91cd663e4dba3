"""Image-level metrics: AUROC, AP and F1-max of one anomaly score per image."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from anomaly.metrics.base import CurveMetric
from anomaly.metrics.checks import image_inputs
from anomaly.metrics.names import DEFAULT_BINS, IMAGE_METRIC_NAMES, Mode


class ImageMetrics(CurveMetric):
    """Image AUROC, AP and F1-max from one sort of the image scores (see :class:`CurveMetric`).

    Example:
        >>> metric = ImageMetrics()
        >>> metric.update(torch.tensor([0.1, 0.9, 0.4]), torch.tensor([0, 1, 1]))
        >>> float(metric.compute()["image_auroc"])
        1.0
    """

    level: ClassVar[str] = "image"
    available: ClassVar[tuple[str, ...]] = IMAGE_METRIC_NAMES

    def update(self, score: Tensor, label: Tensor, where: str | None = None) -> None:
        """Add images: ``score`` (B, higher = more anomalous) and ``label`` (B, 0 normal / 1 anomalous).

        ``where`` names the batch in error messages (default: the update call number).
        """
        scores, labels = image_inputs(score, label, where or f"update call {self._update_count}")
        self._store(scores, labels, int(torch.count_nonzero(labels)))


class _OneImageMetric(ImageMetrics):
    name: ClassVar[str] = ""

    def __init__(self, mode: Mode = "exact", bins: int = DEFAULT_BINS, **kwargs: Any) -> None:
        super().__init__(metrics=(self.name,), mode=mode, bins=bins, **kwargs)

    def compute(self) -> Tensor:
        """The metric as a float64 scalar (NaN if undefined)."""
        return super().compute()[self.name]


class ImageAUROC(_OneImageMetric):
    """Image-level ROC AUC."""

    name: ClassVar[str] = "image_auroc"


class ImageAP(_OneImageMetric):
    """Image-level average precision (step-wise area, as sklearn)."""

    name: ClassVar[str] = "image_ap"


class ImageF1Max(_OneImageMetric):
    """Image-level F1 at the best threshold."""

    name: ClassVar[str] = "image_f1max"
