"""EMA of a subset of modules (torch's ``AveragedModel``), swappable into the live modules.

Lightning's ``EMAWeightAveraging`` averages a deep copy of the whole LightningModule: for DiAD that
would copy and average the frozen UNet encoder, autoencoder and scoring backbone too (1.5 B extra
parameters at paper size) and live in the callbacks group, not the model's config. This keeps
the average of the trainable modules only, as a submodule (so it is in every checkpoint and a
resume continues it), and swaps it in for evaluation.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from anomaly.nn.diffusion.presets import DiffusionConfigError


class ModuleEMA(nn.Module):
    """Exponential moving average of ``modules``' parameters.

    Args:
        modules: the live modules to average (not owned: only their averaged copies are stored).
        decay: EMA decay per update.
    """

    def __init__(self, modules: dict[str, nn.Module], decay: float = 0.999) -> None:
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise DiffusionConfigError(f"model.ema_decay={decay} must lie in [0, 1).")
        self.decay = decay
        self.average = AveragedModel(
            nn.ModuleDict(modules), multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=False
        )
        self.average.requires_grad_(False)
        # Kept out of ``self``'s children so the live weights are not stored twice in checkpoints.
        self._live: list[nn.ModuleDict] = [nn.ModuleDict(modules)]

    @property
    def updates(self) -> int:
        """How many times the average was updated (0: it still equals the initial weights)."""
        return int(self.average.n_averaged)

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
