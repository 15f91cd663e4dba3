"""Class-conditional DDPM building blocks (no Lightning): UNet presets, scheduler, training loss.

The denoiser is a diffusers ``UNet2DModel`` with one class embedding per category; the noise schedule
is a diffusers ``DDPMScheduler``. With learned variance (``variance_type="learned_range"``, Improved
DDPM / guided-diffusion) the UNet outputs 6 channels (ε and the variance interpolation v ∈ [-1, 1])
and is trained with the hybrid loss ``MSE(ε) + vlb_weight · L_vlb`` where the VLB term sees a
stop-gradient mean (guided-diffusion's ``training_losses``). The sampler lives in
:mod:`anomaly.nn.ddpm_sampler`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DModel

from anomaly.nn.diffusion.build import build, check_sides, levels_factor, resolve

# guided-diffusion 256x256 class-conditional model (RealNet's SDAS): 256 base channels, mult
# 1,1,2,2,4,4, two res-blocks, attention at 32/16/8 px with 64-channel heads, res-block up/down
# sampling, scale-shift norm. ~550 M parameters: for GPUs.
_PAPER = {
    "block_out_channels": (256, 256, 512, 512, 1024, 1024),
    "down_block_types": ("ResnetDownsampleBlock2D",) * 3 + ("AttnDownBlock2D",) * 3,
    "up_block_types": ("AttnUpBlock2D",) * 3 + ("ResnetUpsampleBlock2D",) * 3,
    "layers_per_block": 2,
    "attention_head_dim": 64,
    "downsample_type": "resnet",
    "upsample_type": "resnet",
    "norm_num_groups": 32,
    "resnet_time_scale_shift": "scale_shift",
    "dropout": 0.0,
}
# CPU preset for 64x64 images: 64 -> 32 -> 16 -> 8, attention at 16 and 8 px only (~3.3 M parameters).
_CPU = {
    "block_out_channels": (32, 64, 64, 128),
    "down_block_types": ("DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
    "up_block_types": ("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
    "layers_per_block": 1,
    "attention_head_dim": 32,
    "norm_num_groups": 16,
    "resnet_time_scale_shift": "scale_shift",
    "dropout": 0.0,
}
# Smallest sensible net, for tests.
_TINY = {
    "block_out_channels": (8, 16),
    "down_block_types": ("DownBlock2D", "AttnDownBlock2D"),
    "up_block_types": ("AttnUpBlock2D", "UpBlock2D"),
    "layers_per_block": 1,
    "attention_head_dim": 8,
    "norm_num_groups": 4,
    "resnet_time_scale_shift": "scale_shift",
}
UNET_PRESETS: dict[str, dict[str, Any]] = {"paper": _PAPER, "cpu": _CPU, "tiny": _TINY}


class DDPMConfigError(ValueError):
    """A DDPM option (UNet preset, image size, class count, schedule) cannot be used."""


def build_unet(num_classes: int, image_size: int | Sequence[int], preset: str = "cpu",
               learned_variance: bool = True, **overrides: Any) -> UNet2DModel:
    """A class-conditional ``UNet2DModel`` from a preset (``paper``, ``cpu``, ``tiny``) plus overrides.

    Preset resolution, the image-side check and construction are DiAD's (``anomaly.nn.diffusion.build``);
    what is the DDPM's own: pixel space (3 channels in, 6 with a learned variance out), one class
    embedding per category, the sample size from the data.

    Args:
        num_classes: number of categories (rows of the class embedding).
        image_size: training image side (int) or (H, W); each side must be divisible by 2^(levels-1).
        preset: name in :data:`UNET_PRESETS`.
        learned_variance: 6 output channels (ε and v) instead of 3.
        overrides: any ``UNet2DModel`` argument, e.g. ``block_out_channels``.
    """
    kwargs = resolve(UNET_PRESETS, preset, "model.unet.preset", DDPMConfigError, **overrides)
    if int(num_classes) < 1:
        raise DDPMConfigError(f"The DDPM needs at least one category, got num_classes={num_classes}.")
    size = (int(image_size), int(image_size)) if isinstance(image_size, int) else tuple(int(v) for v in image_size)
    levels = len(kwargs["block_out_channels"])
    check_sides(list(size), levels_factor(kwargs["block_out_channels"]), "model.image_size",
                f"the {levels}-level UNet preset {preset!r} (resize the data)", DDPMConfigError)
    return build(UNet2DModel, {**kwargs, "sample_size": size, "in_channels": 3,
                               "out_channels": 6 if learned_variance else 3, "num_class_embeds": int(num_classes)})


def build_scheduler(num_train_timesteps: int = 1000, beta_schedule: str = "linear",
                    learned_variance: bool = True, clip_sample: bool = True) -> DDPMScheduler:
    """The DDPM noise schedule: linear β (1e-4..0.02) over 1000 steps by default, ε-prediction,
    ``learned_range`` variance when learned else ``fixed_small``, "leading" respacing (= guided-diffusion's
    ``ddimN`` section counts)."""
    return DDPMScheduler(num_train_timesteps=int(num_train_timesteps), beta_schedule=beta_schedule,
                         variance_type="learned_range" if learned_variance else "fixed_small",
                         clip_sample=clip_sample, prediction_type="epsilon", timestep_spacing="leading")


def _gather(values: torch.Tensor, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return values.to(x.device, torch.float64)[t].float().view(-1, *([1] * (x.dim() - 1)))


def normal_kl(mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor) -> torch.Tensor:
    """KL divergence between two diagonal Gaussians, elementwise (nats)."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def discretized_gaussian_log_likelihood(x: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor) -> torch.Tensor:
    """Log-likelihood of [-1, 1] images discretised to 8 bits under a Gaussian (DDPM decoder), elementwise."""

    def cdf(v: torch.Tensor) -> torch.Tensor:
        return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (v + 0.044715 * v**3)))

    centred, inv_std = x - means, torch.exp(-log_scales)
    cdf_plus, cdf_min = cdf(inv_std * (centred + 1.0 / 255)), cdf(inv_std * (centred - 1.0 / 255))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_delta))


def vlb_term(scheduler: DDPMScheduler, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor,
             eps: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Per-sample VLB term in bits/dim: KL(q(x_{t-1}|x_t,x_0) ‖ p(x_{t-1}|x_t)), decoder NLL at t = 0."""
    ac = scheduler.alphas_cumprod.to(torch.float64)
    ac_prev = torch.cat([ac.new_ones(1), ac[:-1]])
    betas = scheduler.betas.to(torch.float64)
    post_var = betas * (1 - ac_prev) / (1 - ac)
    post_logvar = torch.log(torch.cat([post_var[1:2], post_var[1:]]))
    coef0, coef_t = betas * ac_prev.sqrt() / (1 - ac), (1 - ac_prev) * (1 - betas).sqrt() / (1 - ac)

    def posterior_mean(x_start: torch.Tensor) -> torch.Tensor:
        return _gather(coef0, t, x_t) * x_start + _gather(coef_t, t, x_t) * x_t

    true_mean, true_logvar = posterior_mean(x0), _gather(post_logvar, t, x_t)
    pred_x0 = (x_t - _gather((1 - ac).sqrt(), t, x_t) * eps) / _gather(ac.sqrt(), t, x_t)
    frac = (v + 1) / 2
    model_logvar = frac * _gather(torch.log(betas), t, x_t) + (1 - frac) * true_logvar
    model_mean = posterior_mean(pred_x0)
    kl = normal_kl(true_mean, true_logvar, model_mean, model_logvar).mean(dim=(1, 2, 3)) / math.log(2.0)
    nll = -discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_logvar).mean(dim=(1, 2, 3)) / math.log(2.0)
    return torch.where(t == 0, nll, kl)


def diffusion_loss(unet: UNet2DModel, scheduler: DDPMScheduler, x0: torch.Tensor, labels: torch.Tensor,
                   vlb_weight: float = 1.0, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """ε-MSE (+ ``vlb_weight`` × VLB with a frozen mean when the UNet predicts the variance).

    Args:
        x0: clean images in [-1, 1], B×3×H×W.
        labels: class indices, B.
    Returns:
        ``{"loss", "mse"}`` and ``"vlb"`` when the variance is learned.
    """
    b = x0.shape[0]
    t = torch.randint(0, scheduler.config.num_train_timesteps, (b,), device=x0.device, generator=generator)
    noise = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
    x_t = scheduler.add_noise(x0, noise, t)
    out = unet(x_t, t, class_labels=labels).sample
    eps = out[:, :3]
    mse = F.mse_loss(eps, noise)
    if out.shape[1] == 3:
        return {"loss": mse, "mse": mse}
    vlb = vlb_term(scheduler, x0, x_t, t, eps.detach(), out[:, 3:]).mean()
    return {"loss": mse + vlb_weight * vlb, "mse": mse, "vlb": vlb}
