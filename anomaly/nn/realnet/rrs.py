"""Reconstruction residual selection (RRS, RealNet §3.3) and its segmentation head, after cnulab/RealNet
``models/rrs/rrs.py``: residuals of every layer upsampled to the finest stride and concatenated; per
image the top ``k_max`` channels by spatial maximum and the top ``k_mean`` by spatial mean (ranked on
batch-normalised residuals, gathered from the raw ones) feed a small decoder giving 2-class logits."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Residual(nn.Module):
    """x + conv1×1(ReLU(conv3×3(ReLU(x)))), bias-free (the official ``Residual``)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.block = nn.Sequential(nn.ReLU(), nn.Conv2d(channels, channels, 3, padding=1, bias=False),
                                   nn.ReLU(), nn.Conv2d(channels, channels, 1, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.block(x)


class SegmentationHead(nn.Module):
    """Residual stack, convs → 128 → 32 → 8, ×2 bilinear up-sampling, convs 8 → 4 → 2 (logits)."""

    def __init__(self, channels: int, num_residual_layers: int = 2) -> None:
        super().__init__()
        self.decoder1 = nn.Sequential(*[Residual(channels) for _ in range(num_residual_layers)], nn.ReLU(),
                                      nn.Conv2d(channels, 128, 3, padding=1), nn.BatchNorm2d(128), nn.ReLU())
        self.decoder2 = nn.Sequential(nn.Conv2d(128, 32, 3, padding=1), nn.ReLU(),
                                      nn.Conv2d(32, 8, 3, padding=1), nn.ReLU())
        self.decoder3 = nn.Sequential(nn.Conv2d(8, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 3, padding=1))

    def forward(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        x = self.decoder2(self.decoder1(x))
        x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=True)
        return F.interpolate(self.decoder3(x), size, mode="bilinear", align_corners=True)


def top_channels(ranked: Tensor, values: Tensor, k: int, mode: str) -> Tensor:
    """The ``k`` channels of ``values`` (B×C×H×W) whose ``ranked`` map has the largest spatial ``mode``
    (``max`` or ``mean``), per image, in descending order of that statistic (B×k×H×W)."""
    flat = ranked.flatten(2)
    statistic = flat.amax(-1) if mode == "max" else flat.mean(-1)
    index = statistic.topk(k, dim=1).indices
    b, _, h, w = values.shape
    return values.gather(1, index[:, :, None, None].expand(b, k, h, w))


class ResidualSelection(nn.Module):
    """RRS + segmentation head: per-layer squared residuals → 2-class logits at the image size.

    Args:
        channels: total residual channels (the sum of the kept channels of all layers).
        k_max, k_mean: channels kept by spatial max and by spatial mean (RealNet: 256, 256).
        num_residual_layers: residual blocks at the head's input (2).
    """

    def __init__(self, channels: int, k_max: int = 256, k_mean: int = 256, num_residual_layers: int = 2) -> None:
        super().__init__()
        self.k_max, self.k_mean = int(k_max), int(k_mean)
        # Official: momentum 0.9 (running statistics follow the last batches closely), no affine part.
        self.norm = nn.BatchNorm2d(channels, momentum=0.9, affine=False)
        self.head = SegmentationHead(self.k_max + self.k_mean, num_residual_layers)

    def select(self, residuals: list[Tensor]) -> Tensor:
        """Up-sample every residual to the first (finest) one's size, concatenate, keep the top channels."""
        size = residuals[0].shape[-2:]
        stacked = torch.cat([residuals[0]] + [F.interpolate(r, size, mode="bilinear", align_corners=True)
                                              for r in residuals[1:]], dim=1)
        with torch.no_grad():
            ranked = self.norm(stacked)
        return torch.cat([top_channels(ranked, stacked, self.k_max, "max"),
                          top_channels(ranked, stacked, self.k_mean, "mean")], dim=1)

    def forward(self, residuals: list[Tensor], size: tuple[int, int]) -> Tensor:
        """2-class logits (B×2×H×W at ``size``) from per-layer residual maps."""
        return self.head(self.select(residuals), size)
