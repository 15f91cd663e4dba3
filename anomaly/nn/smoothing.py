"""Gaussian smoothing of anomaly maps (shared by every method that blurs its map)."""

from __future__ import annotations

import kornia
from torch import Tensor


def gaussian_blur(anomaly_map: Tensor, sigma: float) -> Tensor:
    """Blur B×1×H×W maps with a Gaussian of ``sigma`` pixels (kernel 2·⌊4σ+0.5⌋+1, reflect border)."""
    if sigma <= 0:
        return anomaly_map
    size = 2 * int(4.0 * sigma + 0.5) + 1
    return kornia.filters.gaussian_blur2d(anomaly_map, (size, size), (sigma, sigma), border_type="reflect")
