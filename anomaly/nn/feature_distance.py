"""Anomaly maps from a reconstruction: cosine distance of pretrained features of input and output.

Used by reconstruction methods (DiAD): per backbone layer ``1 − cos`` over channels (or, with
``distance="l2"``, the squared difference averaged over all layers' channels: for standardised
features such as DiAD's feature latent) between the features of the image and of its reconstruction, bilinearly resized to the image and summed over
layers, then a Gaussian blur; the image score is the maximum of the map after ``pool_iters``
stride-1 average pools of ``pool_size`` (DiAD: 8 pools of 8×8; ``pool_iters=0`` is a plain max).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anomaly.nn.smoothing import gaussian_blur

DISTANCES = ("cosine", "l2")


class ScoringConfigError(ValueError):
    """A ``model.scoring`` option that cannot be honoured (the message names it and the choices)."""


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
        backbone: frozen extractor returning ``{layer: B×C×h×w}`` (``FeatureExtractor``; when it lists
            its ``channels``, ``layers`` is checked against them here, not at the first test batch).
        layers: which of its layers to use (all of them when ``None``).
        sigma: Gaussian blur of the summed map, in pixels (0: none).
        pool_size, pool_iters: the image-score pooling (see module doc).
        resize: feed the backbone both images resized to this side (small images give pretrained
            CNNs too few pixels; the map is still at the image's size). ``None``: as they are.
        distance: ``cosine`` (the paper) or ``l2`` (mean squared difference over channels).
    """

    def __init__(
        self,
        backbone: nn.Module,
        layers: Sequence[str] | None = None,
        sigma: float = 4.0,
        pool_size: int = 8,
        pool_iters: int = 8,
        resize: int | None = None,
        distance: str = "cosine",
    ) -> None:
        super().__init__()
        if distance not in DISTANCES:
            raise ScoringConfigError(f"model.scoring.distance={distance} is not valid; choose one of {list(DISTANCES)}.")
        self.distance = distance
        self.resize = resize
        self.backbone = backbone
        self.layers = list(layers) if layers is not None else None
        known = getattr(backbone, "channels", None)
        unknown = [layer for layer in self.layers or [] if known is not None and layer not in known]
        if unknown:
            raise ScoringConfigError(
                f"model.scoring.layers has {unknown}, which model.backbone does not extract; choose from {list(known)} "
                "(or add them to model.backbone.layers)."
            )
        self.sigma, self.pool_size, self.pool_iters = sigma, pool_size, pool_iters

    @torch.no_grad()
    def forward(self, image: Tensor, reconstruction: Tensor) -> tuple[Tensor, Tensor]:
        """``(map B×1×H×W, score B)`` for ImageNet-normalised ``image`` and ``reconstruction``."""
        return self.finish(self.distances(image, reconstruction))

    @torch.no_grad()
    def distances(self, image: Tensor, reconstruction: Tensor) -> Tensor:
        """The summed per-layer distances B×1×H×W of two images, before blur and pooling."""
        pair = torch.cat([image, reconstruction])
        if self.resize is not None and tuple(pair.shape[-2:]) != (self.resize, self.resize):
            pair = F.interpolate(pair, size=(self.resize, self.resize), mode="bilinear", align_corners=False)
        halves = {layer: value.float().chunk(2) for layer, value in self.backbone(pair).items()}
        return self.feature_distances(
            {k: v[0] for k, v in halves.items()}, {k: v[1] for k, v in halves.items()}, image.shape[-2:]
        )

    def feature_distances(
        self, features: dict[str, Tensor], reconstructed: dict[str, Tensor], size: Sequence[int]
    ) -> Tensor:
        """The summed per-layer distances B×1×H×W (at ``size``) of two sets of per-layer features."""
        layers = self.layers if self.layers is not None else list(features)
        missing = [layer for layer in layers if layer not in features]
        if missing:
            raise KeyError(f"The scoring backbone has no layer {missing}; choose from {list(features)}.")
        first = features[layers[0]]
        total = first.new_zeros(first.shape[0], 1, *size, dtype=torch.float32)
        channels = sum(features[layer].shape[1] for layer in layers)
        for layer in layers:
            a, b = features[layer].float(), reconstructed[layer].float()
            if self.distance == "cosine":
                distance = 1.0 - F.cosine_similarity(a, b, dim=1)[:, None]
            else:  # the mean over all layers' channels: every channel weighs the same
                distance = (a - b).pow(2).sum(dim=1, keepdim=True) / channels
            total = total + F.interpolate(distance, size=tuple(size), mode="bilinear", align_corners=False)
        return total

    def finish(self, distances: Tensor) -> tuple[Tensor, Tensor]:
        """``(map, score)`` of summed distances: the Gaussian blur, then the pooled-max image score."""
        anomaly_map = gaussian_blur(distances, self.sigma)
        return anomaly_map, pooled_max(anomaly_map, self.pool_size, self.pool_iters)
