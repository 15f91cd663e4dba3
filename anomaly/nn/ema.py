"""The one EMA of trained weights (DiAD's denoiser, the SDAS DDPM): plain torch, checkpointed, swappable.

It keeps an exponential moving average of some of a model's modules — only the trained ones — as
a submodule of the model, so every checkpoint holds it and a resumed run continues it. The owner
calls ``update()`` after each optimizer step (in ``optimizer_step``, before any callback saves a
checkpoint, once per step also under gradient accumulation), and evaluates or samples with the
averaged weights: ``swap()``/``applied()`` exchange them with the live ones in place;
``averaged(name)`` is the averaged copy of one module (e.g. the UNet to sample with).

Lightning's ``WeightAveraging``/``EMAWeightAveraging`` callbacks do not fit: they average a deep
copy of the whole LightningModule (for DiAD also the frozen UNet encoder, autoencoder and scoring
backbone: up to 1.5 B extra parameters at paper size), write the average into the checkpoint's
``state_dict`` in place of the live weights (so a sampler cannot choose either), and live in the
callbacks group rather than in the model's options.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel


class EMAConfigError(ValueError):
    """An EMA decay outside [0, 1)."""


def _ema_step(decay: float, warmup: bool):
    """``AveragedModel``'s ``multi_avg_fn``: ``avg ← d·avg + (1−d)·live`` with
    ``d = min(decay, (1+n)/(10+n))`` after ``n`` updates when ``warmup`` (guided-diffusion), else ``decay``."""

    @torch.no_grad()
    def step(averaged: list[Tensor], live: list[Tensor], n_averaged: Tensor) -> None:
        d = min(decay, (1.0 + float(n_averaged)) / (10.0 + float(n_averaged))) if warmup else decay
        torch._foreach_lerp_(averaged, live, 1.0 - d)

    return step


class ModuleEMA(nn.Module):
    """Exponential moving average of ``modules``' parameters.

    Args:
        modules: the live modules to average, by name (not owned: only the averaged copies are
            stored, under ``average.module.<name>``).
        decay: the EMA decay per update.
        warmup: use ``min(decay, (1+n)/(10+n))`` after ``n`` updates (so early averages do not
            hold on to the random initialisation); otherwise ``decay`` from the second update on.
        option: the config option of ``decay``, named in the error message.

    The first update copies the live weights; until then the averaged copies hold the weights at
    construction (or those of a loaded checkpoint).
    """

    def __init__(
        self, modules: dict[str, nn.Module], decay: float = 0.999, warmup: bool = False,
        option: str = "model.ema_decay",
    ) -> None:
        super().__init__()
        if not 0.0 <= float(decay) < 1.0:
            raise EMAConfigError(f"{option}={decay} must lie in [0, 1).")
        self.decay, self.warmup = float(decay), bool(warmup)
        self.average = AveragedModel(
            nn.ModuleDict(modules), multi_avg_fn=_ema_step(self.decay, self.warmup), use_buffers=False
        )
        self.average.requires_grad_(False)
        # Kept out of ``self``'s children so the live weights are not stored twice in checkpoints.
        self._live: list[nn.ModuleDict] = [nn.ModuleDict(modules)]

    @property
    def updates(self) -> int:
        """How many times the average was updated (0: it still equals the initial weights)."""
        return int(self.average.n_averaged)

    def averaged(self, name: str) -> nn.Module:
        """The averaged copy of the module called ``name``."""
        return self.average.module[name]

    @torch.no_grad()
    def update(self) -> None:
        """Fold the live parameters into the average (the first update copies them)."""
        self.average.update_parameters(self._live[0])

    @torch.no_grad()
    def swap(self) -> None:
        """Exchange live and averaged parameter values (call twice to undo)."""
        live = list(self._live[0].parameters())
        avg = list(self.average.module.parameters())
        for a, b in zip(live, avg, strict=True):
            tmp = a.detach().clone()
            a.copy_(b)
            b.copy_(tmp)

    @contextmanager
    def applied(self) -> Iterator[None]:
        """Run a block with the averaged weights in the live modules (no-op before the first update)."""
        if self.updates == 0:
            yield
            return
        self.swap()
        try:
            yield
        finally:
            self.swap()
