"""The synthesis-strategy protocol and helpers shared by every strategy.

A strategy turns a normal training image into ``(image, mask)``. It is called by the training
Dataset after resize/crop and before normalisation (see ``notes/CONTRACTS.md``)::

    image, mask = strategy(image, rng, category)

``image`` is uint8 H×W×3 RGB, ``rng`` a ``numpy.random.Generator`` (the only source of randomness,
so a fixed seed gives the same anomaly), ``category`` the sample's category name. The mask is float32
H×W in {0, 1}: the region the strategy wrote. Pixels outside it are bit-identical to the input
(enforced here, not left to each strategy); pixels inside may by chance keep their value.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np


class SynthesisConfigError(ValueError):
    """A synthesis option has a value the strategy cannot use."""


def check_image(image: np.ndarray) -> None:
    """Raise ``ValueError`` unless ``image`` is a uint8 H×W×3 array."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        desc = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"A synthesis strategy needs a uint8 H×W×3 RGB image, got {desc}; "
                         "apply it before normalisation and tensor conversion.")


def check_range(name: str, value: Sequence[float], low: float, high: float) -> tuple[float, float]:
    """Validate a ``[lo, hi]`` option with ``low <= lo <= hi <= high`` and return it as a tuple."""
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise SynthesisConfigError(f"{name} must be a pair [lo, hi], got {value!r}.") from None
    if not (low <= lo <= hi <= high):
        raise SynthesisConfigError(f"{name}={[lo, hi]} is outside its range: set {low} <= lo <= hi <= {high}.")
    return lo, hi


def check_probability(name: str, value: float) -> float:
    """Validate a probability option in [0, 1]."""
    if not 0.0 <= float(value) <= 1.0:
        raise SynthesisConfigError(f"{name}={value} must lie in [0, 1].")
    return float(value)


def blend(image: np.ndarray, source: np.ndarray, region: np.ndarray, beta: float) -> np.ndarray:
    """``(1-M)·I + M·(β·A + (1-β)·I)`` in float, rounded back to uint8 (outside M untouched)."""
    mixed = beta * source.astype(np.float32) + (1.0 - beta) * image.astype(np.float32)
    mixed = np.clip(np.rint(mixed), 0, 255).astype(np.uint8)
    return np.where(region[..., None], mixed, image)


class SynthesisStrategy(ABC):
    """Base class: draws "normal or anomalous", retries empty regions, enforces the mask contract.

    Args:
        normal_probability: chance that a call leaves the image normal (input returned unchanged,
            mask all zeros). 0 = every image gets an anomaly, 1 = synthesis is off. RealNet: 0.5.
        max_attempts: how many times an empty region (e.g. a Perlin mask that misses the object)
            is redrawn before the image is returned normal.
    """

    def __init__(self, normal_probability: float = 0.5, max_attempts: int = 8) -> None:
        self.normal_probability = check_probability("synthesis.normal_probability", normal_probability)
        if int(max_attempts) < 1:
            raise SynthesisConfigError(f"synthesis.max_attempts={max_attempts} must be at least 1.")
        self.max_attempts = int(max_attempts)

    @property
    def probability(self) -> float:
        """Alias of ``normal_probability`` required by CONTRACTS.md: the chance to leave an image normal."""
        return self.normal_probability

    @abstractmethod
    def synthesize(self, image: np.ndarray, rng: np.random.Generator,
                   category: str | None) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(changed image, boolean region)``; called only when an anomaly is wanted."""

    def __call__(self, image: np.ndarray, rng: np.random.Generator,
                 category: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Apply the strategy: with ``normal_probability`` return the input untouched, else synthesise."""
        check_image(image)
        empty = np.zeros(image.shape[:2], np.float32)
        if rng.random() < self.normal_probability:
            return image, empty
        for _ in range(self.max_attempts):
            out, region = self.synthesize(image, rng, category)
            region = np.asarray(region, dtype=bool)
            if region.any():
                out = np.where(region[..., None], out, image).astype(np.uint8)
                return out, region.astype(np.float32)
        return image, empty

    def __repr__(self) -> str:
        return f"{type(self).__name__}(normal_probability={self.normal_probability})"
