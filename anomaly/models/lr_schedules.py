"""Per-step learning-rate schedules for ``configure_optimizers`` (``LambdaLR`` factors)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import torch

SCHEDULES = ("constant", "cosine")


def linear_warmup(step: int, start: int, warmup: int) -> float:
    """0 before ``start``, then a linear ramp to 1 over ``warmup`` steps (1 throughout when ``warmup <= 0``)."""
    if warmup <= 0:
        return 1.0
    return min(1.0, max(0.0, (step - start + 1) / warmup))


def cosine_to_zero(step: int, steps: int) -> float:
    """Cosine from 1 at step 0 to 0 at ``steps`` (and 0 after)."""
    return 0.5 * (1.0 + math.cos(math.pi * min(step, steps) / steps))


def check_schedule(name: str, error: type[Exception] = ValueError) -> str:
    """``name`` if it is one of :data:`SCHEDULES`, else ``error`` naming ``model.lr_schedule``."""
    if name not in SCHEDULES:
        raise error(f"model.lr_schedule={name!r} is unknown; use constant or cosine.")
    return name


def per_step(optimizer: torch.optim.Optimizer, factors: Sequence[Callable[[int], float]]) -> dict[str, Any]:
    """Lightning's optimizer config with a ``LambdaLR`` (one factor per parameter group) stepped every step."""
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, list(factors))
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def over_run(optimizer: torch.optim.Optimizer, name: str, total_steps: int) -> Any:
    """``optimizer`` as is (``constant``) or cosine-decayed to 0 over the run's ``total_steps`` (``cosine``)."""
    if name == "constant":
        return optimizer
    return per_step(optimizer, [partial(cosine_to_zero, steps=max(int(total_steps), 1))] * len(optimizer.param_groups))
