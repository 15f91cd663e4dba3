"""Anomaly maps from a reconstruction: cosine distance of pretrained features of input and output.

Used by reconstruction methods (DiAD): per backbone layer ``1 − cos`` over channels between the
features of the image and of its reconstruction, bilinearly resized to the image and summed over
layers, then a Gaussian blur; the image score is the maximum of the map after ``pool_iters``
stride-1 average pools of ``pool_size`` (DiAD: 8 pools of 8×8; ``pool_iters=0`` is a plain max).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anomaly.nn.smoothing import gaussian_blur


def pooled_max(anomaly_map: Tensor, pool_size: int = 8, pool_iters: int = 8) -> Tensor:
    """Image scores B of B×1×H×W maps: max after repeated stride-1 average pooling."""
    pooled = anomaly_map
    for _ in range(pool_iters):
        if min(pooled.shape[-2:]) < pool_size:
            break
        pooled = F.avg_pool2d(pooled, pool_size, stride=1)
    return pooled.flatten(1).amax(dim=1)


class FeatureDistance(nn.Module):
    """Map and score from features of an image and its reconstruction.

    Args:
        backbone: frozen extractor returning ``{layer: B×C×h×w}`` (``FeatureExtractor``).
        layers: which of its layers to use (all of them when ``None``).
        sigma: Gaussian blur of the summed map, in pixels (0: none).
        pool_size, pool_iters: the image-score pooling (see module doc).
        resize: feed the backbone both images resized to this side (small images give pretrained
            CNNs too few pixels; the map is still at the image's size). ``None``: as they are.
    """

    def __init__(
        self,
        backbone: nn.Module,
        layers: Sequence[str] | None = None,
        sigma: float = 4.0,
        pool_size: int = 8,
        pool_iters: int = 8,
        resize: int | None = None,
    ) -> None:
        super().__init__()
        self.resize = resize
        self.backbone = backbone
        self.layers = list(layers) if layers is not None else None
        self.sigma, self.pool_size, self.pool_iters = sigma, pool_size, pool_iters

    @torch.no_grad()
    def forward(self, image: Tensor, reconstruction: Tensor) -> tuple[Tensor, Tensor]:
        """``(map B×1×H×W, score B)`` for ImageNet-normalised ``image`` and ``reconstruction``."""
        pair = torch.cat([image, reconstruction])
        if self.resize is not None and tuple(pair.shape[-2:]) != (self.resize, self.resize):
            pair = F.interpolate(pair, size=(self.resize, self.resize), mode="bilinear", align_corners=False)
        features = self.backbone(pair)
        layers = self.layers if self.layers is not None else list(features)
        missing = [layer for layer in layers if layer not in features]
        if missing:
            raise KeyError(f"The scoring backbone has no layer {missing}; choose from {list(features)}.")
        size = image.shape[-2:]
        total = image.new_zeros(image.shape[0], 1, *size)
        for layer in layers:
            a, b = features[layer].float().chunk(2)
            distance = 1.0 - F.cosine_similarity(a, b, dim=1)[:, None]
            total = total + F.interpolate(distance, size=size, mode="bilinear", align_corners=False)
        anomaly_map = gaussian_blur(total, self.sigma)
        return anomaly_map, pooled_max(anomaly_map, self.pool_size, self.pool_iters)
