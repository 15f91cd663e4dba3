"""The blocks of DiAD's feature latent: frozen pretrained CNN features on a grid, a decoder to look at it.

An alternative to DiAD's pixel-space autoencoder when none is pretrained (no SD-1.5 weights, a CPU
budget): the latent of an image is the scoring backbone's own features (e.g. EfficientNet blocks
1, 2, 4), each layer average-pooled or resized to one grid (image size / ``downsampling``),
concatenated and standardised per channel with statistics of normal training images
(``FeatureGrid``). Its encoder is pretrained for free, it is as sharp as the backbone, and the
anomaly map compares features of the latent and of its denoised version directly — no
decode-then-re-encode step. ``FeatureDecoder`` maps latents back to pixels only so that a user
can see the reconstruction. DiAD uses them through ``latents.FeatureLatent``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anomaly.nn.content_cache import ContentCache
from anomaly.nn.diffusion.presets import DiffusionConfigError


def to_grid(feature: Tensor, size: tuple[int, int]) -> Tensor:
    """Resize a feature map to ``size``: area average when shrinking, bilinear when growing."""
    if tuple(feature.shape[-2:]) == size:
        return feature
    if feature.shape[-2] >= size[0] and feature.shape[-1] >= size[1]:
        return F.adaptive_avg_pool2d(feature, size)
    return F.interpolate(feature, size=size, mode="bilinear", align_corners=False)


class FeatureGrid(nn.Module):
    """Standardised multi-layer features of a frozen backbone on a grid of image size / ``downsampling``.

    Args:
        backbone: frozen extractor returning ``{layer: B×C×h×w}`` with a ``channels`` dict
            (``FeatureExtractor``; DiAD shares its scoring backbone).
        layers: the layers that make the latent (all of the backbone's when ``None``).
        downsampling: image side / latent side (2, 4 or 8: the SG hint encoder's factors).
        resize: feed the backbone images resized to this side (``None``: as they are).
        cache: keep the features of up to this many distinct training images in memory, on the CPU,
            keyed by a 128-bit hash of their content and shape: without augmentation every epoch
            after the first skips the backbone (with augmentation it fills up and rarely hits;
            leave it 0 then). 0: no cache.
    """

    def __init__(
        self,
        backbone: nn.Module,
        layers: Sequence[str] | None = None,
        downsampling: int = 4,
        resize: int | None = None,
        cache: int = 0,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.layers = list(layers) if layers is not None else list(backbone.channels)
        unknown = [layer for layer in self.layers if layer not in backbone.channels]
        if unknown:
            raise DiffusionConfigError(
                f"model.latent.layers has {unknown}, which model.backbone does not extract; "
                f"choose from {list(backbone.channels)}."
            )
        self.widths = [int(backbone.channels[layer]) for layer in self.layers]
        if int(downsampling) not in (2, 4, 8):
            raise DiffusionConfigError(
                f"model.latent.downsampling={downsampling} is not supported; use 2, 4 or 8 (the SG hint encoder's factors)."
            )
        self.downsampling, self.resize = int(downsampling), resize
        self.cache = ContentCache(cache)
        self.register_buffer("mean", torch.full((sum(self.widths),), math.nan))
        self.register_buffer("std", torch.full((sum(self.widths),), math.nan))

    @property
    def channels(self) -> int:
        """Latent channels (sum of the layers' widths)."""
        return sum(self.widths)

    @property
    def fitted(self) -> bool:
        """Whether the standardisation statistics are set."""
        return not bool(torch.isnan(self.mean).any())

    @torch.no_grad()
    def raw(self, image: Tensor, cached: bool = False) -> Tensor:
        """Concatenated features on the latent grid, not standardised (B×C×H/d×W/d).

        ``cached``: look the images up in (and add them to) the training cache first.
        """
        return self.cache(image, self._extract) if cached else self._extract(image)

    def _extract(self, image: Tensor) -> Tensor:
        size = (image.shape[-2] // self.downsampling, image.shape[-1] // self.downsampling)
        pixels = image
        if self.resize is not None and tuple(image.shape[-2:]) != (self.resize, self.resize):
            pixels = F.interpolate(image, size=(self.resize, self.resize), mode="bilinear", align_corners=False)
        features = self.backbone(pixels)
        return torch.cat([to_grid(features[layer].float(), size) for layer in self.layers], dim=1).contiguous()

    @torch.no_grad()
    def fit(self, image: Tensor) -> None:
        """Set the per-channel mean and std from a batch of normal images."""
        z = self.raw(image).transpose(0, 1).flatten(1)
        self.mean.copy_(z.mean(dim=1))
        self.std.copy_(z.std(dim=1).clamp_min(1e-6))

    def encode(self, image: Tensor, cached: bool = False) -> Tensor:
        """The standardised latent of ImageNet-normalised images (``cached``: see ``raw``)."""
        if not self.fitted:
            raise DiffusionConfigError(
                "The feature latent (model.latent) has no feature statistics yet (the model was never trained); "
                "train it first."
            )
        return (self.raw(image, cached) - self.mean[:, None, None]) / self.std[:, None, None]

    def split(self, latent: Tensor, standardised: bool = False) -> dict[str, Tensor]:
        """Per-layer features of a latent: de-standardised (cosine distances are then the backbone's)
        unless ``standardised``."""
        features = latent.float()
        if not standardised:
            features = features * self.std[:, None, None] + self.mean[:, None, None]
        return dict(zip(self.layers, features.split(self.widths, dim=1), strict=True))


class FeatureDecoder(nn.Module):
    """A small conv decoder from a feature latent to an (ImageNet-normalised) image, for viewing.

    Args:
        channels: latent channels; downsampling: image side / latent side (a power of 2).
        width: channels of the first conv, halved after every 2× upsampling.
    """

    def __init__(self, channels: int, downsampling: int = 4, width: int = 128) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(channels, width, 3, padding=1), nn.SiLU()]
        for _ in range(int(math.log2(downsampling))):
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(width, width // 2, 3, padding=1), nn.SiLU()]
            width //= 2
        layers.append(nn.Conv2d(width, 3, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, latent: Tensor) -> Tensor:
        """B×3×H×W images of B×C×h×w latents."""
        return self.net(latent)
