"""Noising a latent to ``t_start`` and denoising it with DDIM (diffusers schedulers)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from diffusers import DDIMScheduler
from torch import Tensor

from anomaly.nn.diffusion.presets import SD_SCHEDULER, DiffusionConfigError


def make_scheduler(**overrides: Any) -> DDIMScheduler:
    """A DDIM scheduler with SD-1.5's schedule (scaled linear β 0.00085–0.012, 1000 steps) + overrides."""
    return DDIMScheduler(**{**SD_SCHEDULER, **overrides})


def sample_timesteps(
    scheduler: DDIMScheduler, batch: int, device: torch.device, high: int | None = None
) -> Tensor:
    """Uniform training timesteps in ``[0, high)`` (``high``: ``num_train_timesteps`` when ``None``)."""
    total = scheduler.config.num_train_timesteps
    return torch.randint(0, total if high is None else min(int(high), total), (batch,), device=device)


def q_sample(scheduler: DDIMScheduler, z0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
    """``√ᾱ_t z0 + √(1−ᾱ_t) ε`` (the scheduler's ``add_noise``)."""
    return scheduler.add_noise(z0, noise, t)


def denoising_target(scheduler: DDIMScheduler, z0: Tensor, noise: Tensor, t: Tensor, x_t: Tensor) -> Tensor:
    """What the network must output at ``x_t`` to denoise towards ``z0``, by ``prediction_type``.

    With ``x_t = q_sample(z0, t, noise)`` this is the usual target (ε, ``z0`` or v). When ``x_t``
    was noised from another latent (a synthetic anomaly) and ``z0`` is its normal source, ε and v
    are the ones implied by ``x_t`` and ``z0``: DDIM from ``x_t`` then lands on ``z0``.
    """
    kind = scheduler.config.prediction_type
    if kind == "sample":
        return z0
    alpha = scheduler.alphas_cumprod.to(device=z0.device, dtype=z0.dtype)[t].reshape(-1, *[1] * (z0.dim() - 1))
    implied = (x_t - alpha.sqrt() * z0) / (1 - alpha).sqrt()
    if kind == "epsilon":
        return implied
    if kind == "v_prediction":
        return alpha.sqrt() * implied - (1 - alpha).sqrt() * z0
    raise DiffusionConfigError(f"model.scheduler.prediction_type={kind!r} must be epsilon, sample or v_prediction.")


def check_t_start(scheduler: DDIMScheduler, t_start: int, n_steps: int) -> None:
    """Fail clearly when ``t_start``/``n_steps`` leave no DDIM step to run."""
    total = scheduler.config.num_train_timesteps
    if not 0 <= t_start < total:
        raise DiffusionConfigError(f"model.t_start={t_start} must lie in [0, {total - 1}].")
    if not 1 <= n_steps <= total:
        raise DiffusionConfigError(f"model.n_steps={n_steps} must lie in [1, {total}].")
    scheduler.set_timesteps(n_steps)
    if not bool((scheduler.timesteps <= t_start).any()):
        raise DiffusionConfigError(
            f"model.t_start={t_start} is below the first of the {n_steps} DDIM steps "
            f"({int(scheduler.timesteps.min())}); raise model.t_start or model.n_steps."
        )


@torch.no_grad()
def ddim_reconstruct(
    eps: Callable[[Tensor, Tensor], Tensor],
    scheduler: DDIMScheduler,
    z0: Tensor,
    t_start: int,
    n_steps: int,
    noise: Tensor | None = None,
) -> Tensor:
    """Noise ``z0`` to ``t_start``, then run the DDIM steps (η = 0) at or below ``t_start``.

    ``n_steps`` places DDIM steps over the whole schedule as diffusers/LDM do (``leading``
    spacing with SD-1.5's offset: 901, 801, …, 1 for 10 steps), so with ``t_start = 999`` the first
    step is 901 as in the official code; ``timestep_spacing=trailing`` starts exactly at 999.
    Returns the last step's x̂0 estimate (exactly ``z0`` for a perfect ε-predictor).

    Args:
        eps: ``(x_t, t) -> ε̂``, t a long tensor of shape B; the caller closes over the hint.
        scheduler: a DDIM scheduler (its ``set_timesteps`` state is changed).
        z0: clean latents; noise: the ε of the forward noising (random when ``None``).
    """
    check_t_start(scheduler, t_start, n_steps)
    scheduler.set_timesteps(n_steps, device=z0.device)
    noise = torch.randn_like(z0) if noise is None else noise
    start = torch.full((z0.shape[0],), t_start, device=z0.device, dtype=torch.long)
    x = q_sample(scheduler, z0, start, noise)
    estimate = x
    for t in scheduler.timesteps[scheduler.timesteps <= t_start]:
        out = scheduler.step(eps(x, t.expand(z0.shape[0])), t, x, eta=0.0)
        x, estimate = out.prev_sample, out.pred_original_sample
    return estimate
