"""Input checks: every bad input stops with one sentence that names the batch and the fix."""

from __future__ import annotations

import torch
from torch import Tensor


class MetricInputError(ValueError):
    """Bad input to a metric (non-finite scores, wrong shapes, unknown category, labels not 0/1)."""


def check_finite(values: Tensor, name: str, where: str) -> None:
    """Raise if ``values`` holds NaN or inf, counting each kind.

    Args:
        values: scores of any shape.
        name: what the values are, e.g. ``"anomaly_map"``.
        where: which batch they came from, e.g. ``"batch 12 (categories: screw)"``.
    """
    if values.numel() == 0:
        return
    low, high = torch.aminmax(values.reshape(-1))  # one pass; NaN propagates, inf shows at an end
    if bool(torch.isfinite(low) & torch.isfinite(high)):
        return
    finite = torch.isfinite(values)
    nan = int(torch.isnan(values).sum())
    inf = int((~finite).sum()) - nan
    raise MetricInputError(
        f"{name} of {where} holds {nan} NaN and {inf} inf values (of {values.numel()}): metrics need "
        "finite scores; fix the model output (or clamp it) before updating the metrics."
    )


def image_inputs(score: Tensor, label: Tensor, where: str) -> tuple[Tensor, Tensor]:
    """Flatten and check image scores and labels; returns (float32 scores, float32 0/1 labels)."""
    score, label = score.detach().reshape(-1), label.detach().reshape(-1)
    if score.numel() != label.numel():
        raise MetricInputError(f"{where}: {score.numel()} image scores but {label.numel()} labels.")
    check_finite(score, "score", where)
    if not bool(((label == 0) | (label == 1)).all()):
        raise MetricInputError(f"{where}: image labels must be 0 (normal) or 1 (anomalous).")
    return canonical_scores(score), label.to(torch.float32)


def pixel_inputs(anomaly_map: Tensor, mask: Tensor, where: str) -> tuple[Tensor, Tensor]:
    """Check anomaly maps against masks; returns (float32 maps B×H×W, bool masks B×H×W, mask > 0)."""
    anomaly_map, mask = _squeeze_channel(anomaly_map.detach()), _squeeze_channel(mask.detach())
    if anomaly_map.dim() != 3 or anomaly_map.shape != mask.shape:
        raise MetricInputError(
            f"{where}: anomaly_map {tuple(anomaly_map.shape)} and mask {tuple(mask.shape)} must both be "
            "B×1×H×W (or B×H×W) of the same size; resize the map to the mask size."
        )
    check_finite(anomaly_map, "anomaly_map", where)
    return canonical_scores(anomaly_map), mask > 0


def canonical_scores(scores: Tensor) -> Tensor:
    """Scores as float32 with -0.0 turned into +0.0 (so that equal scores always tie)."""
    return scores.to(torch.float32) + 0.0


def _squeeze_channel(t: Tensor) -> Tensor:
    return t[:, 0] if t.dim() == 4 and t.shape[1] == 1 else t
