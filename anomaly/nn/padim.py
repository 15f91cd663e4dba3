"""PaDiM as a plain torch module: embedding, per-position Gaussian, Mahalanobis anomaly map."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anomaly.config.check import ConfigError
from anomaly.data.errors import DataError
from anomaly.nn.backbone import FeatureExtractor
from anomaly.nn.gaussian import PositionalGaussian, float32_or_wider
from anomaly.nn.smoothing import gaussian_blur


class InputSizeError(DataError):
    """Images of another size than the one the model's grid was fitted for."""


class PadimModel(nn.Module):
    """Patch distribution modelling (Defard et al., 2020) without any training loop.

    Args:
        backbone: frozen feature extractor; its layers are concatenated at the first layer's grid.
        n_features: size of the random channel subset (PaDiM's "Rd"); ``None`` keeps all channels.
        input_size: (height, width) of the images the model will see (fixes the grid size); images
            of another size are refused, never resampled.
        epsilon: covariance ridge. ``sigma``: blur of the upsampled map. ``seed``: channel subset seed.

    Only the backbone follows the caller's precision (autocast); statistics, distances, upsampling
    and blur run in float32 or wider with autocast off.
    """

    def __init__(
        self,
        backbone: FeatureExtractor,
        input_size: tuple[int, int],
        n_features: int | None = 100,
        epsilon: float = 0.01,
        sigma: float = 4.0,
        seed: int = 0,
        chunk: int = 1024,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.sigma, self.chunk = sigma, chunk
        channels = [backbone.channels[layer] for layer in backbone.layers]
        total = sum(channels)
        if n_features is None:
            n_features = total
        if not 0 < n_features <= total:
            raise ConfigError(
                f"model.n_features={n_features} must be in 1..{total} (the channel total of "
                f"{getattr(backbone, 'name', type(backbone).__name__)}'s layers {list(backbone.layers)})."
            )
        generator = torch.Generator().manual_seed(seed)
        chosen = torch.randperm(total, generator=generator)[:n_features].sort().values
        # Per-layer indices, so only the chosen channels are upsampled.
        offsets = torch.tensor([0, *channels]).cumsum(0)
        self.layer_indices = [
            (chosen[(chosen >= lo) & (chosen < hi)] - lo) for lo, hi in zip(offsets[:-1], offsets[1:], strict=True)
        ]
        for layer, index in zip(backbone.layers, self.layer_indices, strict=True):
            self.register_buffer(f"index_{layer.replace('.', '_')}", index, persistent=False)
        stride = backbone.strides[backbone.layers[0]]
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.grid = (input_size[0] // stride, input_size[1] // stride)
        self.gaussian = PositionalGaussian(self.grid[0] * self.grid[1], n_features, epsilon)

    def embed(self, image: Tensor) -> Tensor:
        """B×3×H×W → B×P×d embeddings (P grid positions of the first layer)."""
        size = tuple(image.shape[-2:])
        if size != self.input_size:
            raise InputSizeError(
                f"PaDiM was built for {self.input_size[0]}×{self.input_size[1]} images (model.input_size) "
                f"but got {size[0]}×{size[1]}; give images of the fitted size (data.image_size/data.crop_size)."
            )
        features = self.backbone(image)
        parts = []
        for layer in self.backbone.layers:
            index = getattr(self, f"index_{layer.replace('.', '_')}")
            selected = features[layer].index_select(1, index)
            if selected.shape[-2:] != self.grid:
                selected = F.interpolate(selected, size=self.grid, mode="nearest")
            parts.append(selected)
        embedding = torch.cat(parts, 1)
        return embedding.flatten(2).transpose(1, 2)

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor]:
        """Anomaly map at input size and image score (map maximum)."""
        return self.score_embedding(self.embed(image))

    def score_embedding(self, embedding: Tensor, gaussian: PositionalGaussian | None = None) -> tuple[Tensor, Tensor]:
        """Anomaly map at input size and image score of B×P×d ``embedding`` under ``gaussian`` (the model's
        by default; another: a leave-fold-out fit): Mahalanobis distance, upsampled, blurred, maximum."""
        gaussian = self.gaussian if gaussian is None else gaussian
        with torch.autocast(embedding.device.type, enabled=False):
            distance = gaussian.mahalanobis(embedding, self.chunk)
            grid_map = distance.view(embedding.shape[0], 1, *self.grid).to(float32_or_wider(distance.dtype))
            anomaly_map = F.interpolate(grid_map, size=self.input_size, mode="bilinear", align_corners=False)
            anomaly_map = gaussian_blur(anomaly_map, self.sigma)
        return anomaly_map, anomaly_map.flatten(1).amax(1)
