"""Pixel-level metrics: AUROC, AP, F1-max and AUPRO of anomaly maps against ground-truth masks."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from anomaly.metrics.base import CurveMetric
from anomaly.metrics.checks import pixel_inputs
from anomaly.metrics.names import DEFAULT_BINS, PIXEL_METRIC_NAMES, Mode
from anomaly.metrics.regions import region_sizes


class PixelMetrics(CurveMetric):
    """Pixel AUROC, AP, F1-max and AUPRO from one sort of all pixel scores (see :class:`CurveMetric`).

    Masks are binarised with ``mask > 0``. With AUPRO requested, each anomalous pixel stores the size
    of its ground-truth region (8-connected components, :mod:`anomaly.metrics.regions`); without it,
    no regions are labelled.

    Example:
        >>> metric = PixelMetrics(metrics=("pixel_auroc",))
        >>> mask = torch.zeros(1, 1, 4, 4); mask[..., :2, :2] = 1
        >>> metric.update(mask * 2 + 1, mask)
        >>> float(metric.compute()["pixel_auroc"])
        1.0
    """

    level: ClassVar[str] = "pixel"
    available: ClassVar[tuple[str, ...]] = PIXEL_METRIC_NAMES

    def update(self, anomaly_map: Tensor, mask: Tensor, where: str | None = None) -> None:
        """Add images: ``anomaly_map`` B×1×H×W (or B×H×W) and ``mask`` of the same shape in {0, 1}.

        ``where`` names the batch in error messages (default: the update call number).
        """
        scores, positive = pixel_inputs(anomaly_map, mask, where or f"update call {self._update_count}")
        if "pixel_aupro" in self.metrics:
            payload, regions, positives = region_sizes(positive)
        else:
            payload, regions = positive.to(scores.dtype), 0
            positives = int(torch.count_nonzero(positive))
        self._store(scores, payload, positives, regions)


class _OnePixelMetric(PixelMetrics):
    name: ClassVar[str] = ""

    def __init__(self, mode: Mode = "exact", bins: int = DEFAULT_BINS, **kwargs: Any) -> None:
        super().__init__(metrics=(self.name,), mode=mode, bins=bins, **kwargs)

    def compute(self) -> Tensor:
        """The metric as a float64 scalar (NaN if undefined)."""
        return super().compute()[self.name]


class PixelAUROC(_OnePixelMetric):
    """Pixel-level ROC AUC over all pixels."""

    name: ClassVar[str] = "pixel_auroc"


class PixelAP(_OnePixelMetric):
    """Pixel-level average precision over all pixels."""

    name: ClassVar[str] = "pixel_ap"


class PixelF1Max(_OnePixelMetric):
    """Pixel-level F1 at the best threshold."""

    name: ClassVar[str] = "pixel_f1max"


class PixelAUPRO(_OnePixelMetric):
    """Per-region overlap integrated up to FPR 0.3, divided by 0.3 (MVTec AD)."""

    name: ClassVar[str] = "pixel_aupro"
