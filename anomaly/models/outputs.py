"""What a method returns for a batch: the one typed output every evaluation path reads."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from torch import Tensor


@dataclass
class AnomalyOutput:
    """A method's answer for one batch (higher = more anomalous).

    Attributes:
        anomaly_map: B×1×H×W at the input size.
        score: B image scores.
        reconstruction: B×3×H×W normalised images for reconstruction methods (heatmap panels).
        raw_map: B×1×h×w map before smoothing and pooling, for methods that can turn a map into
            ``(anomaly_map, score)`` again (``AnomalyModule.finish_map``); per-pixel calibration
            works on it. ``None``: calibration works on ``anomaly_map`` and the score is its max.
        extras: anything else a method wants callbacks to see (named tensors).
    """

    anomaly_map: Tensor
    score: Tensor
    reconstruction: Tensor | None = None
    raw_map: Tensor | None = None
    extras: dict[str, Tensor] = field(default_factory=dict)

    def with_map(self, anomaly_map: Tensor, score: Tensor) -> AnomalyOutput:
        """A copy with another map and score (after a post-processor)."""
        return replace(self, anomaly_map=anomaly_map, score=score)
