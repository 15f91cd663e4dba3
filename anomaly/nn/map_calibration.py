"""Per-pixel calibration of anomaly maps against the maps of a category's normal images.

A reconstruction model errs in the same places on every normal image (the image border, flat
background the denoiser cannot pin down); those places then outscore real defects. Calibration
collects, per category, the per-pixel mean and standard deviation of the maps of normal training
images and turns each test map into a z-score against them. Statistics are float64 sums, so
they do not depend on batch order.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


class CalibrationError(ValueError):
    """Calibration asked for categories it has no normal maps of, or had too few images."""


class MapCalibration:
    """Per-category per-pixel mean/std of normal maps; ``__call__`` z-scores maps against them.

    Args:
        option: the config option that turns calibration on, named in error messages.
        error: the exception type raised (a method's own configuration error).
    """

    def __init__(self, option: str = "model.calibrate", error: type[Exception] = CalibrationError) -> None:
        self.option, self.error = option, error
        self._sums: dict[str, list[Tensor]] = {}
        self.statistics: dict[str, tuple[Tensor, Tensor]] = {}

    def clear(self) -> None:
        """Forget every statistic (the model's weights changed)."""
        self._sums, self.statistics = {}, {}

    def covers(self, categories: Sequence[str]) -> bool:
        """Whether every one of ``categories`` has statistics."""
        return bool(self.statistics) and set(categories) <= set(self.statistics)

    def add(self, categories: Sequence[str], maps: Tensor) -> None:
        """Accumulate normal maps B×1×H×W of the given categories (one per map)."""
        for category, one in zip(categories, maps.detach().double().cpu(), strict=True):
            total = self._sums.setdefault(category, [torch.zeros(()), torch.zeros_like(one), torch.zeros_like(one)])
            total[0] += 1
            total[1] += one
            total[2] += one * one

    def finish(self) -> None:
        """Turn the accumulated sums into the statistics (replacing earlier ones)."""
        self.statistics = {}
        for category, (n, first, second) in self._sums.items():
            if n < 2:
                raise self.error(
                    f"{self.option}=true needs at least 2 normal training images of '{category}', found {int(n)}."
                )
            mean = first / n
            std = ((second / n - mean * mean).clamp_min(0) * n / (n - 1)).sqrt()
            floor = (1e-3 * std.mean()).clamp_min(1e-6)  # no spread (identical maps) must not divide by 0
            self.statistics[category] = (mean.float(), (std + floor).float())
        self._sums = {}

    def __call__(self, maps: Tensor, categories: Sequence[str]) -> Tensor:
        """Z-scores of maps B×1×H×W against their categories' normal maps."""
        missing = sorted(set(categories) - set(self.statistics))
        if missing:
            raise self.error(
                f"{self.option}=true has no normal maps of {missing}; fit it on their training images first "
                "(the trainer does so before testing)."
            )
        mean = torch.stack([self.statistics[c][0] for c in categories]).to(maps.device)
        std = torch.stack([self.statistics[c][1] for c in categories]).to(maps.device)
        return (maps - mean) / std
