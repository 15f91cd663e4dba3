"""Strength-controllable sampling of a class-conditional DDPM (RealNet's SDAS), no Lightning.

Ancestral sampling over respaced steps with the perturbed noise term (RealNet, Eq. 2)::

    x_{t-1} = μ_θ(x_t, t) + √(1+s)·σ_t·z,   z ~ N(0, I)

s = 0 is the plain sampler (it reproduces diffusers' ``DDPMScheduler.step`` for the same noise);
larger s leaves the normal manifold. The DDIM variant follows RealNet's code: the deterministic
DDIM update (η = 0 by default) plus ``√s·σ_t·z`` with σ_t the ancestral standard deviation, so s = 0
is plain DDIM. RealNet's defaults: s ~ U[0.1, 0.2] with 20 ancestral steps, s ~ U[0.01, 0.03] for DDIM.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from diffusers import DDPMScheduler, UNet2DModel
from diffusers.utils.torch_utils import randn_tensor

from anomaly.nn.ddpm import DDPMConfigError

S_MAX = 10.0  # √(1+10) ≈ 3.3× the model's noise: beyond this samples are saturated noise
METHODS = ("ancestral", "ddim")
Generators = torch.Generator | list[torch.Generator] | None


def check_strength(s_range: Sequence[float], option: str = "sampler.s") -> tuple[float, float]:
    """Validate a strength range ``[lo, hi]`` with ``0 <= lo <= hi <= S_MAX``."""
    try:
        lo, hi = (float(v) for v in s_range)
    except (TypeError, ValueError):
        raise DDPMConfigError(f"{option} must be a pair [lo, hi] (e.g. [0.1, 0.2]), got {s_range!r}.") from None
    if not (0.0 <= lo <= hi <= S_MAX) or not (math.isfinite(lo) and math.isfinite(hi)):
        raise DDPMConfigError(f"{option}={[lo, hi]} is outside its range: use 0 <= lo <= hi <= {S_MAX} "
                              "(RealNet: [0.1, 0.2] ancestral, [0.01, 0.03] ddim).")
    return lo, hi


def _alphas(scheduler: DDPMScheduler, t: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    prev_t = int(scheduler.previous_timestep(t))
    a_t = scheduler.alphas_cumprod[t]
    a_prev = scheduler.alphas_cumprod[prev_t] if prev_t >= 0 else scheduler.one
    return a_t, a_prev, 1 - a_t / a_prev


def _predict(scheduler: DDPMScheduler, out: torch.Tensor, t: int,
             x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return (x̂0 clipped, a_t, a_prev, β_t, σ_t) for one step; σ_t follows the scheduler's variance type."""
    a_t, a_prev, beta_t = _alphas(scheduler, t)
    eps = out[:, :3]
    x0 = (x - (1 - a_t) ** 0.5 * eps) / a_t**0.5
    if scheduler.config.clip_sample:
        x0 = x0.clamp(-scheduler.config.clip_sample_range, scheduler.config.clip_sample_range)
    var = torch.clamp((1 - a_prev) / (1 - a_t) * beta_t, min=1e-20)
    if scheduler.config.variance_type == "learned_range":
        if out.shape[1] != 6:
            raise DDPMConfigError("The scheduler expects a learned variance but the UNet outputs 3 channels; "
                                  "set model.learned_variance to match the checkpoint.")
        frac = (out[:, 3:] + 1) / 2
        std = torch.exp(0.5 * (frac * torch.log(beta_t) + (1 - frac) * torch.log(var)))
    elif scheduler.config.variance_type == "fixed_small":
        std = var**0.5 * torch.ones_like(x)
    else:
        raise DDPMConfigError(f"variance_type={scheduler.config.variance_type!r} is not supported; "
                              "use learned_range or fixed_small.")
    return x0, a_t, a_prev, beta_t, std


def ancestral_step(scheduler: DDPMScheduler, out: torch.Tensor, t: int, x: torch.Tensor,
                   s: torch.Tensor | float = 0.0, generator: Generators = None) -> torch.Tensor:
    """One respaced ancestral step ``x_{t-1} = μ + √(1+s)·σ_t·z`` (``scheduler.set_timesteps`` done)."""
    x0, a_t, a_prev, beta_t, std = _predict(scheduler, out, t, x)
    mean = (a_prev**0.5 * beta_t / (1 - a_t)) * x0 + ((1 - beta_t) ** 0.5 * (1 - a_prev) / (1 - a_t)) * x
    if t == 0:
        return mean
    z = randn_tensor(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return mean + torch.sqrt(1 + torch.as_tensor(s, dtype=x.dtype)) * std * z


def ddim_step(scheduler: DDPMScheduler, out: torch.Tensor, t: int, x: torch.Tensor,
              s: torch.Tensor | float = 0.0, eta: float = 0.0, generator: Generators = None) -> torch.Tensor:
    """One DDIM step (ε re-derived from the clipped x̂0) plus RealNet's ``√s·σ_t·z`` perturbation."""
    x0, a_t, a_prev, _, std = _predict(scheduler, out, t, x)
    eps = (x - a_t**0.5 * x0) / (1 - a_t) ** 0.5
    sigma = eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)) ** 0.5
    x_prev = a_prev**0.5 * x0 + (1 - a_prev - sigma**2) ** 0.5 * eps
    s = torch.as_tensor(s, dtype=x.dtype)
    if t == 0 or (eta == 0 and not bool((s > 0).any())):
        return x_prev
    z = randn_tensor(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return x_prev + sigma * z + torch.sqrt(s) * std * z


@torch.no_grad()
def sample(unet: UNet2DModel, scheduler: DDPMScheduler, labels: torch.Tensor, num_steps: int = 20,
           s: torch.Tensor | Sequence[float] | float = 0.0, method: str = "ancestral", eta: float = 0.0,
           generator: Generators = None, size: Sequence[int] | None = None,
           callback: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """Draw one image per label with strength ``s`` (scalar or one per image); returns B×3×H×W in [-1, 1].

    Args:
        unet: the class-conditional denoiser.
        scheduler: its training schedule (a private copy is respaced to ``num_steps``).
        labels: class indices, B.
        num_steps: respaced steps ("leading" spacing, as guided-diffusion's ``ddimN``).
        s: noise strength; 0 = plain sampler.
        method: ``ancestral`` or ``ddim``.
        eta: DDIM η (ignored by the ancestral sampler).
        generator: a ``torch.Generator`` or one per image (per-image generators make each image's
            noise independent of the batch it is drawn in; the bank relies on it for resuming).
        size: (H, W); default the UNet's ``sample_size``.
        callback: called as ``callback(step, num_steps)`` after each step.
    """
    if method not in METHODS:
        raise DDPMConfigError(f"sampler.method={method!r} is unknown; use one of {list(METHODS)}.")
    if not 1 <= int(num_steps) <= scheduler.config.num_train_timesteps:
        raise DDPMConfigError(f"sampler.num_steps={num_steps} must lie in [1, {scheduler.config.num_train_timesteps}].")
    device, dtype = labels.device, next(unet.parameters()).dtype
    b = labels.shape[0]
    s_t = torch.as_tensor(s, dtype=dtype, device=device).reshape(-1, 1, 1, 1)
    if s_t.numel() not in (1, b) or bool((s_t < 0).any()) or bool((s_t > S_MAX).any()):
        raise DDPMConfigError(f"sampler strength s must be one value or one per image in [0, {S_MAX}].")
    sched = DDPMScheduler.from_config(scheduler.config)
    sched.set_timesteps(int(num_steps), device=device)
    side = size if size is not None else unet.config.sample_size
    h, w = (side, side) if isinstance(side, int) else tuple(side)
    x = randn_tensor((b, 3, h, w), generator=generator, device=device, dtype=dtype)
    for i, t in enumerate(sched.timesteps.tolist()):
        out = unet(x, t, class_labels=labels).sample
        if method == "ancestral":
            x = ancestral_step(sched, out, t, x, s_t, generator)
        else:
            x = ddim_step(sched, out, t, x, s_t, eta, generator)
        if callback is not None:
            callback(i + 1, len(sched.timesteps))
    return x.clamp(-1, 1)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """B×3×H×W in [-1, 1] → uint8 B×H×W×3 RGB."""
    x = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round()
    return x.permute(0, 2, 3, 1).numpy().astype(np.uint8)
