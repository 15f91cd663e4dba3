"""DiAD's first stage: train or fine-tune the KL autoencoder on normal images."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from anomaly.models.base import AnomalyModule, build_block
from anomaly.models.lr_schedules import check_schedule, over_run
from anomaly.models.outputs import AnomalyOutput
from anomaly.nn.diffusion import architecture_of, autoencoder_loss, build_autoencoder
from anomaly.nn.feature_distance import pooled_max
from anomaly.nn.smoothing import gaussian_blur


class FeaturePerceptual(nn.Module):
    """LPIPS-like loss without learned weights: squared distance of channel-normalised features.

    Args:
        backbone: frozen extractor returning ``{layer: B×C×h×w}`` (gradients flow to its input).
    """

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, image: Tensor, reconstruction: Tensor) -> Tensor:
        """Mean over layers of the per-position squared distance of unit-normalised features."""
        features = self.backbone(torch.cat([image, reconstruction]))
        total = image.new_zeros(())
        for value in features.values():
            a, b = nn.functional.normalize(value.float(), dim=1).chunk(2)
            total = total + (a - b).pow(2).sum(1).mean()
        return total / len(features)


class DiADAutoencoder(AnomalyModule):
    """Fits ``AutoencoderKL`` (L1 + KL, optional perceptual term) for ``model=diad`` to load.

    It is an ``AnomalyModule`` so the usual entry point trains, checkpoints and tests it: its
    anomaly map is the blurred per-pixel L1 reconstruction error, a baseline that also shows in
    the heatmaps whether the autoencoder reconstructs normal content. Pass the run's
    ``checkpoints/last.ckpt`` as ``model.autoencoder.weights`` of ``model=diad``.

    Args:
        autoencoder: ``build_autoencoder`` arguments (``preset``, ``weights`` to fine-tune from
            an LDM/diffusers checkpoint, overrides).
        lr: AdamW learning rate; kl_weight: KL weight (LDM: 1e-6).
        lr_schedule: ``constant`` (LDM) or ``cosine`` (to 0 over the run's steps: a short
            from-scratch fit ends much sharper).
        perceptual: optional frozen backbone for a perceptual term; perceptual_weight: its weight.
        sigma, pool_size, pool_iters: blur and image-score pooling of the error map.
        download: allow fetching a hub id of ``autoencoder.weights``.
        **kwargs: ``AnomalyModule`` options (evaluator, calibrate).
    """

    def __init__(
        self,
        autoencoder: dict[str, Any] | None = None,
        lr: float = 1e-4,
        lr_schedule: str = "constant",
        kl_weight: float = 1e-6,
        perceptual: nn.Module | Mapping[str, Any] | None = None,
        perceptual_weight: float = 1.0,
        sigma: float = 4.0,
        pool_size: int = 8,
        pool_iters: int = 1,
        download: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.autoencoder = build_autoencoder(
            download=download, option="model.autoencoder", **dict(autoencoder or {"preset": "kl-f8"})
        )
        self.perceptual = FeaturePerceptual(build_block(perceptual)) if perceptual is not None else None
        self.lr, self.lr_schedule = lr, check_schedule(lr_schedule)
        self.kl_weight, self.perceptual_weight = kl_weight, perceptual_weight
        self.sigma, self.pool_size, self.pool_iters = sigma, pool_size, pool_iters

    def reconstruct(self, image: Tensor) -> Tensor:
        """The autoencoder's reconstruction (posterior mode)."""
        with torch.no_grad():
            return self.autoencoder.decode(self.autoencoder.encode(image).latent_dist.mode()).sample

    def finish_map(self, raw_map: Tensor) -> tuple[Tensor, Tensor]:
        anomaly_map = gaussian_blur(raw_map, self.sigma)
        return anomaly_map, pooled_max(anomaly_map, self.pool_size, self.pool_iters)

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor]:
        """Blurred L1 error map of the reconstruction and its pooled maximum."""
        return self.finish_map((image - self.reconstruct(image)).abs().mean(1, keepdim=True))

    def score_batch(self, batch: Mapping[str, Any]) -> AnomalyOutput:
        image = batch["image"]
        reconstruction = self.reconstruct(image)
        raw = (image - reconstruction).abs().mean(1, keepdim=True)
        return AnomalyOutput(*self.finish_map(raw), reconstruction=reconstruction, raw_map=raw)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        image = batch.get("source", batch["image"])  # normal images only, also under a synthesis strategy
        loss, parts, _ = autoencoder_loss(
            self.autoencoder, image, self.kl_weight, self.perceptual, self.perceptual_weight
        )
        self.log("train/loss", loss, prog_bar=True, batch_size=image.shape[0])
        self.log_dict({f"train/{k}": v for k, v in parts.items()}, batch_size=image.shape[0])
        return loss

    def restore_overrides(self) -> dict[str, Any]:
        """Rebuild the autoencoder (and a perceptual backbone) without reading weights files."""
        overrides: dict[str, Any] = {"autoencoder": {"architecture": architecture_of(self.autoencoder)}}
        if self.perceptual is not None:
            overrides["perceptual"] = {"weights": "none"}
        return overrides

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.AdamW(self.autoencoder.parameters(), lr=self.lr, betas=(0.5, 0.9))
        return over_run(optimizer, self.lr_schedule, self.trainer.estimated_stepping_batches)
