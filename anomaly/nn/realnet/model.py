"""RealNet's pure model: frozen backbone → AFS-kept channels → per-layer reconstruction → RRS → map."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anomaly.nn.backbone import FeatureExtractor
from anomaly.nn.realnet.afs import SELECTIONS, FeatureSelection
from anomaly.nn.realnet.errors import RealNetConfigError
from anomaly.nn.realnet.rrs import ResidualSelection
from anomaly.nn.realnet.unet import ReconstructionUNet


@dataclass
class Reconstruction:
    """Per-layer kept features, their reconstructions and squared residuals."""

    features: list[Tensor]
    reconstructions: list[Tensor]
    residuals: list[Tensor]


def check_sizes(backbone: FeatureExtractor, k: Sequence[int], k_max: int, k_mean: int) -> None:
    """Refuse ``k`` that does not fit the backbone's layers, and RRS sizes larger than the residual stack."""
    layers = list(backbone.layers)
    if len(k) != len(layers):
        raise RealNetConfigError(f"model.k={list(k)} has {len(k)} entries but model.backbone.layers={layers} has "
                                 f"{len(layers)}; give one kept-channel count per layer.")
    for layer, kept in zip(layers, k, strict=True):
        available = backbone.channels[layer]
        if not 1 <= int(kept) <= available:
            raise RealNetConfigError(f"model.k={list(k)} keeps {kept} channels of layer {layer}, which has "
                                     f"{available} channels in {backbone.name}; set its entry to at most {available}.")
    total = sum(int(v) for v in k)
    for name, value in (("k_max", k_max), ("k_mean", k_mean)):
        if not 1 <= int(value) <= total:
            raise RealNetConfigError(f"model.{name}={value} must lie in [1, {total}] (the kept channels of all "
                                     f"layers, sum of model.k={list(k)}).")


class RealNetModel(nn.Module):
    """RealNet (Zhang, Xu & Zhou, CVPR 2024) without its training loop: ``forward(image) -> (map, score)``.

    Args:
        backbone: frozen feature extractor over the layers used (RealNet: WRN50 layer1–4).
        k: channels kept by AFS per layer (RealNet: 256, 512, 512, 256).
        selection: ``afs`` or ``random`` (:class:`FeatureSelection`); selection_seed for ``random``.
        width_ratio, channel_mult, num_res_blocks, attention_levels: each layer's
            :class:`ReconstructionUNet` (0.5; 1, 2, 4; 2; 2 and 4).
        k_max, k_mean, num_residual_layers: :class:`ResidualSelection` (256, 256, 2).
        pool_size: image score = max of the ``pool_size``×``pool_size`` (stride 1) average-pooled map
            (RealNet: 16 at 256 px).
        score_border: map pixels at each edge the image score ignores (RealNet: 0). The edge pixels are
            the ones whose features and head convolutions see zero padding, and the pixel loss barely
            constrains them (the 4 corner pixels of a 256² map weigh 1/16384): trained maps can peak there
            on normal images, and a max-type score then ranks those corners instead of the defects. Pixel
            metrics use the whole map.

    ``feature_scale`` (one number per layer, 1 until fitted) divides the kept features: RealNet's WRN50
    features are post-ReLU with an RMS near 1, EfficientNet-Lite0's block outputs are linear bottlenecks
    with an RMS near 10, whose squared residuals (10⁴) swamp the segmentation head (see ``RealNet``).
    """

    def __init__(self, backbone: FeatureExtractor, k: Sequence[int], selection: str = "afs", selection_seed: int = 0,
                 width_ratio: float = 0.5, channel_mult: Sequence[int] = (1, 2, 4), num_res_blocks: int = 2,
                 attention_levels: Sequence[int] = (2, 4), k_max: int = 256, k_mean: int = 256,
                 num_residual_layers: int = 2, pool_size: int = 16, score_border: int = 0) -> None:
        super().__init__()
        check_sizes(backbone, k, k_max, k_mean)
        if selection not in SELECTIONS:
            raise RealNetConfigError(f"model.selection={selection} is not one of {list(SELECTIONS)}.")
        if int(pool_size) < 1:
            raise RealNetConfigError(f"model.pool_size={pool_size} must be at least 1.")
        if int(score_border) < 0:
            raise RealNetConfigError(f"model.score_border={score_border} must be 0 or more (map pixels per edge).")
        self.backbone = backbone
        self.selection = FeatureSelection([backbone.channels[layer] for layer in backbone.layers], k, selection,
                                          selection_seed)
        self.unets = nn.ModuleList(ReconstructionUNet(int(c), width_ratio, channel_mult, num_res_blocks,
                                                      attention_levels) for c in k)
        self.rrs = ResidualSelection(sum(int(c) for c in k), k_max, k_mean, num_residual_layers)
        self.pool_size, self.score_border = int(pool_size), int(score_border)
        self.register_buffer("feature_scale", torch.ones(len(self.unets)))
        self.register_buffer("scale_fitted", torch.zeros((), dtype=torch.bool))

    def check_image_size(self, height: int, width: int, option: str = "data.image_size") -> None:
        """Refuse an input size whose feature maps the UNets cannot halve ``len(channel_mult) - 1`` times, or
        that ``score_border`` would leave empty."""
        for layer in self.backbone.layers:
            stride, factor = self.backbone.strides[layer], self.unets[0].factor
            if height % (stride * factor) or width % (stride * factor):
                raise RealNetConfigError(
                    f"{option}={height}x{width} gives layer {layer} (stride {stride}) a map the reconstruction "
                    f"UNet cannot halve {factor.bit_length() - 1} times; use sides divisible by "
                    f"{max(self.backbone.strides.values()) * factor}.")
        if 2 * self.score_border >= min(height, width):
            raise RealNetConfigError(f"model.score_border={self.score_border} leaves nothing of a {height}x{width} "
                                     f"map; use a border below {min(height, width) // 2}.")

    def feature_shapes(self, height: int, width: int) -> list[tuple[int, int, int]]:
        """``(channels, height, width)`` of each layer's kept features for an input of ``height``×``width``
        (sides divisible by the strides, see :meth:`check_image_size`)."""
        strides = [self.backbone.strides[layer] for layer in self.backbone.layers]
        return [(int(k), height // s, width // s) for k, s in zip(self.selection.k, strides, strict=True)]

    def kept_features(self, image: Tensor) -> list[Tensor]:
        """The AFS-kept channels of every layer, divided by ``feature_scale`` (no gradient: the backbone is
        frozen)."""
        with torch.no_grad():
            features = self.backbone(image)
            kept = self.selection([features[layer].float() for layer in self.backbone.layers])
            return [f / self.feature_scale[i] for i, f in enumerate(kept)]

    def reconstruct(self, features: list[Tensor]) -> Reconstruction:
        """Each layer's reconstruction and squared residual ``(F − R(F))²``."""
        reconstructions = [unet(f) for unet, f in zip(self.unets, features, strict=True)]
        residuals = [(f - r) ** 2 for f, r in zip(features, reconstructions, strict=True)]
        return Reconstruction(features, reconstructions, residuals)

    def logits(self, residuals: list[Tensor], size: tuple[int, int]) -> Tensor:
        """2-class segmentation logits at ``size`` (RRS + head)."""
        return self.rrs(residuals, size)

    def score(self, anomaly_map: Tensor) -> Tensor:
        """Image score: max of the stride-1 average-pooled map inside ``score_border`` (the pool clipped to
        the map size)."""
        b = self.score_border
        height, width = anomaly_map.shape[-2:]
        inner = anomaly_map[..., b:height - b, b:width - b]
        size = min(self.pool_size, inner.shape[-2], inner.shape[-1])
        return F.avg_pool2d(inner, size, stride=1).flatten(1).amax(1)

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor]:
        """``(p(anomalous) map B×1×H×W at the input size, image score B)``."""
        logits = self.logits(self.reconstruct(self.kept_features(image)).residuals, tuple(image.shape[-2:]))
        anomaly_map = logits.softmax(1)[:, 1:]
        return anomaly_map, self.score(anomaly_map)
