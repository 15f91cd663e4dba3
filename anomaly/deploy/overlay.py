"""Prediction panels: ``input | heatmap | contour at the pixel threshold`` (the heatmaps' own drawing)."""

from __future__ import annotations

import numpy as np
import torch

from anomaly.callbacks.heatmaps import overlay_panel


def prediction_panel(image: np.ndarray, anomaly_map: np.ndarray, region: np.ndarray, low: float, high: float) -> np.ndarray:
    """uint8 RGB panel of one prediction.

    Args:
        image: uint8 h×w×3 RGB the model saw; anomaly_map: float h×w; region: bool h×w (map ≥ pixel threshold).
        low, high: the map values shown as the coldest and hottest colours (the source split's map range,
            so panels of different images compare).
    """
    rgb = torch.from_numpy(image).permute(2, 0, 1).float() / 255.0
    return overlay_panel(rgb, torch.from_numpy(anomaly_map)[None], torch.from_numpy(region.astype(np.float32))[None],
                         low, high)
