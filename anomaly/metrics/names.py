"""Metric names, modes and defaults shared by every module of the metrics package."""

from __future__ import annotations

from typing import Literal

IMAGE_METRIC_NAMES: tuple[str, ...] = ("image_auroc", "image_ap", "image_f1max")
PIXEL_METRIC_NAMES: tuple[str, ...] = ("pixel_auroc", "pixel_ap", "pixel_f1max", "pixel_aupro")
METRIC_NAMES: tuple[str, ...] = IMAGE_METRIC_NAMES + PIXEL_METRIC_NAMES

Mode = Literal["exact", "binned"]
MODES: tuple[str, ...] = ("exact", "binned")

#: Bins of a ``binned`` histogram when none are configured (2.6 MiB of state per category and level).
DEFAULT_BINS = 65_536
#: Largest certified binning error accepted without a warning.
DEFAULT_TOLERANCE = 1e-3
#: AUPRO integrates PRO(FPR) over FPR in [0, FPR_LIMIT] and divides by FPR_LIMIT (MVTec AD).
FPR_LIMIT = 0.3


def curve_name(metric: str) -> str:
    """The level-free part of a metric name: ``"pixel_aupro"`` -> ``"aupro"``."""
    return metric.split("_", 1)[1]
