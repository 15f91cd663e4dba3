"""The paper's latent: a KL autoencoder's (diffusers ``AutoencoderKL``), optionally fitted in the same run."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from anomaly.nn.diffusion.autoencoder import autoencoder_loss, build_autoencoder, downsampling
from anomaly.nn.diffusion.build import architecture_of
from anomaly.nn.diffusion.latents.base import Broadcast, Latent, LatentContext
from anomaly.nn.diffusion.presets import DiffusionConfigError
from anomaly.nn.diffusion.weights import WeightsError

REFERENCES = ("input", "autoencoder")


class AutoencoderLatent(Latent):
    """Scaled posterior latents of a frozen KL autoencoder (LDM KL-f8 = SD-1.5's VAE in the paper).

    With ``fit_steps > 0`` the first training steps fit the autoencoder (L1 + KL, its LR cosine-decayed
    to 0 over them), for presets without a pretrained one; then it is frozen.

    Args:
        context: what DiAD shares (only ``download`` is used).
        preset, weights, architecture, **overrides: ``build_autoencoder`` arguments (``weights``: a
            ``model=diad_autoencoder`` last.ckpt, a diffusers folder, an LDM checkpoint or a hub id).
        fit_steps, lr, kl_weight: the fitting phase (0: the autoencoder must come trained).
        scale: latent multiplier; ``None``: the autoencoder's ``scaling_factor`` (0.18215 for SD's);
            ``auto``: 1/std of the first diffusion batch's latents (LDM's ``scale_by_std``); a number.
        reference: what the reconstruction is compared with: ``input`` (the paper: the image) or
            ``autoencoder`` (its own reconstruction of the image, so a small autoencoder's blur
            cancels and the map shows what the denoiser changed).
    """

    fit_name = "ae"

    def __init__(
        self,
        context: LatentContext,
        preset: str = "kl-f8",
        weights: str | None = None,
        architecture: dict[str, Any] | None = None,
        fit_steps: int = 0,
        lr: float = 1e-4,
        kl_weight: float = 1e-6,
        scale: float | str | None = None,
        reference: str = "input",
        **overrides: Any,
    ) -> None:
        super().__init__()
        if reference not in REFERENCES:
            raise DiffusionConfigError(f"model.latent.reference={reference} is not valid; choose one of {list(REFERENCES)}.")
        self.fit_steps, self.lr, self.kl_weight = int(fit_steps), float(lr), float(kl_weight)
        if weights is None and architecture is None and self.fit_steps <= 0:
            raise WeightsError(
                "DiAD needs a trained autoencoder: set model.latent.weights to a model=diad_autoencoder "
                "last.ckpt (or a diffusers/LDM VAE), or model.latent.fit_steps>0 to fit one first."
            )
        self.autoencoder = build_autoencoder(preset, weights, context.download, architecture, "model.latent", **overrides)
        self.autoencoder.requires_grad_(self.fit_steps > 0)
        self._frozen = self.fit_steps <= 0
        self.channels = int(self.autoencoder.config.latent_channels)
        self.downsampling = downsampling(self.autoencoder)
        self.reference = reference
        if scale == "auto":
            value = math.nan
        elif scale is None:
            value = float(self.autoencoder.config.scaling_factor)
        else:
            value = float(scale)
        self.register_buffer("scale", torch.tensor(value))

    def encode(self, image: Tensor, sample: bool = False, cached: bool = False) -> Tensor:
        if torch.isnan(self.scale):
            raise DiffusionConfigError(
                "model.latent.scale=auto is not estimated yet (the model was never trained); train it or set "
                "model.latent.scale to a number."
            )
        posterior = self.autoencoder.encode(image).latent_dist
        return (posterior.sample() if sample else posterior.mode()) * self.scale

    def decode(self, latent: Tensor) -> Tensor:
        return self.autoencoder.decode(latent / self.scale).sample

    def fitting(self, step: int) -> bool:
        return step < self.fit_steps and not self._frozen

    def fit_loss(self, image: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        loss, parts, _ = autoencoder_loss(self.autoencoder, image, self.kl_weight)
        return loss, parts

    def prepare(self, image: Tensor, broadcast: Broadcast) -> None:
        """Freeze the autoencoder; estimate ``scale=auto`` once."""
        if not self._frozen:
            self.autoencoder.requires_grad_(False)
            self._frozen = True
        if torch.isnan(self.scale):
            with torch.no_grad():
                std = self.autoencoder.encode(image).latent_dist.sample().float().std()
            self.scale.fill_(float(broadcast((1.0 / std).reshape(()))))

    def optimizer_groups(self) -> list[tuple[dict[str, Any], str]]:
        if self.fit_steps <= 0:
            return []
        return [({"params": list(self.autoencoder.parameters()), "lr": self.lr, "weight_decay": 0.0}, "fit")]

    def distances(self, scorer: nn.Module, image: Tensor, z0: Tensor, denoised: Tensor, reconstruction: Tensor) -> Tensor:
        reference = image if self.reference == "input" else self.decode(z0).to(image.dtype)
        return scorer.distances(reference, reconstruction)

    def restore_overrides(self) -> dict[str, Any]:
        return {"architecture": architecture_of(self.autoencoder)}
