"""Learning-rate factors for ``torch.optim.lr_scheduler.LambdaLR`` (bind arguments with ``partial``)."""

from __future__ import annotations

import math


def linear_warmup(step: int, start: int, warmup: int) -> float:
    """0 before ``start``, then a linear ramp to 1 over ``warmup`` steps (1 throughout when ``warmup <= 0``)."""
    if warmup <= 0:
        return 1.0
    return min(1.0, max(0.0, (step - start + 1) / warmup))


def cosine_to_zero(step: int, steps: int) -> float:
    """Cosine from 1 at step 0 to 0 at ``steps`` (and 0 after)."""
    return 0.5 * (1.0 + math.cos(math.pi * min(step, steps) / steps))
