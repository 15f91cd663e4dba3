"""DiAD's feature latent: the frozen scoring backbone's standardised features (not in the paper)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from anomaly.nn.diffusion.feature_latent import FeatureDecoder, FeatureGrid
from anomaly.nn.diffusion.latents.base import Broadcast, Latent, LatentContext
from anomaly.nn.diffusion.presets import DiffusionConfigError


class FeatureLatent(Latent):
    """The backbone's features on a grid of image side / ``downsampling``, standardised per channel
    with the statistics of the first training batch (``FeatureGrid``); the anomaly map compares the
    features of the latent and of its denoised version; a small decoder trained beside the denoiser
    (L1, the latent gets no gradient) turns latents into images for viewing only.

    Args:
        context: what DiAD shares: the scoring ``backbone`` and the ``resize`` it sees images at.
        layers: backbone layers in the latent (all when ``None``).
        downsampling: image side / latent side (2, 4 or 8).
        cache: keep the features of up to this many training images (0: off; see ``FeatureGrid``).
        decoder_width, decoder_lr: the viewing decoder's first width and its AdamW LR.
    """

    def __init__(
        self,
        context: LatentContext,
        layers: Sequence[str] | None = None,
        downsampling: int = 4,
        cache: int = 0,
        decoder_width: int = 128,
        decoder_lr: float = 1e-3,
    ) -> None:
        super().__init__()
        self.grid = FeatureGrid(context.backbone, layers, downsampling, context.resize, cache)
        self.channels, self.downsampling = self.grid.channels, self.grid.downsampling
        self.decoder = FeatureDecoder(self.channels, self.downsampling, int(decoder_width))
        self.decoder_lr = float(decoder_lr)

    def encode(self, image: Tensor, sample: bool = False, cached: bool = False) -> Tensor:
        return self.grid.encode(image, cached=cached)

    def decode(self, latent: Tensor) -> Tensor:
        return self.decoder(latent)

    def prepare(self, image: Tensor, broadcast: Broadcast) -> None:
        """Set the standardisation statistics from the first batch (rank 0's under DDP)."""
        if not self.grid.fitted:
            self.grid.fit(image)
            for buffer in (self.grid.mean, self.grid.std):
                buffer.copy_(broadcast(buffer))

    def auxiliary_losses(self, z0: Tensor, image: Tensor) -> dict[str, Tensor]:
        return {"decoder_l1": F.l1_loss(self.decoder(z0.detach()).float(), image.float())}

    def optimizer_groups(self) -> list[tuple[dict[str, Any], str]]:
        return [({"params": list(self.decoder.parameters()), "lr": self.decoder_lr, "weight_decay": 0.0}, "diffusion")]

    def distances(self, scorer: nn.Module, image: Tensor, z0: Tensor, denoised: Tensor, reconstruction: Tensor) -> Tensor:
        standardised = scorer.distance == "l2"  # every channel weighs the same
        a, b = (self.grid.split(z, standardised) for z in (z0, denoised))
        return scorer.feature_distances(a, b, image.shape[-2:])

    def check_scoring(self, layers: Sequence[str] | None) -> None:
        outside = [layer for layer in layers or [] if layer not in self.grid.layers]
        if outside:
            raise DiffusionConfigError(
                f"model.scoring.layers has {outside}, which model.latent.layers leaves out of the latent; "
                "add them there or drop them from the scoring."
            )
