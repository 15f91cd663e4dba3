"""The one non-finite-loss guard of every gradient-trained module."""

from __future__ import annotations

import lightning as L
import torch
from torch import Tensor


class NonFiniteLossError(ValueError):
    """A training loss became NaN or inf."""


def check_finite_loss(module: L.LightningModule, loss: Tensor) -> None:
    """Stop with one sentence when ``loss`` is NaN/inf (Lightning's ``on_before_backward`` calls this)."""
    if not torch.isfinite(loss).all():
        raise NonFiniteLossError(
            f"{type(module).__name__}'s training loss became {float(loss.detach())} at step {module.global_step}; the last "
            "good checkpoint is kept. Lower model.lr, set trainer.gradient_clip_val=1.0 or use "
            "trainer.precision=32-true, then resume with ckpt_path=last."
        )
