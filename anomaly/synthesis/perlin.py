"""DRAEM-style Perlin-noise anomalies: a Perlin region (× foreground) filled with a blended texture."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from anomaly.synthesis.base import SynthesisConfigError, SynthesisStrategy, blend, check_range
from anomaly.synthesis.foreground import Foreground
from anomaly.synthesis.perlin_noise import perlin_mask
from anomaly.synthesis.textures import ProceduralTextures, TextureSource


class PerlinSynthesis(SynthesisStrategy):
    """Perlin-mask anomaly: ``I' = (1-M)·I + M·(β·A + (1-β)·I)``, ``M = Perlin mask × foreground``.

    Args:
        texture: the texture source A (default: :class:`ProceduralTextures`, offline).
        foreground: optional :class:`Foreground`; the region is restricted to the object.
        beta: range of the texture opacity β ~ U[lo, hi] (DRAEM/RealNet-DTD: [0.2, 1.0]).
        scales: inclusive range of the Perlin scale exponent per axis: 2^U{lo..hi} cells (0..5).
        threshold: Perlin threshold (0.5).
        rotation: the noise is rotated by U[-rotation, rotation] degrees (90).
        normal_probability: chance of leaving an image normal (see :class:`SynthesisStrategy`).
        max_attempts: redraws of an empty region before giving up (image left normal).
    """

    def __init__(self, texture: TextureSource | None = None, foreground: Foreground | None = None,
                 beta: Sequence[float] = (0.2, 1.0), scales: Sequence[int] = (0, 5), threshold: float = 0.5,
                 rotation: float = 90.0, normal_probability: float = 0.5, max_attempts: int = 8) -> None:
        super().__init__(normal_probability=normal_probability, max_attempts=max_attempts)
        self.texture = texture if texture is not None else ProceduralTextures()
        self.foreground = foreground
        self.beta = check_range("synthesis.beta", beta, 0.0, 1.0)
        lo, hi = check_range("synthesis.scales", scales, 0, 10)
        if lo != int(lo) or hi != int(hi):
            raise SynthesisConfigError(f"synthesis.scales={list(scales)} must be integer exponents, e.g. [0, 5].")
        self.scales = (int(lo), int(hi))
        if not -1.0 < float(threshold) < 1.0:
            raise SynthesisConfigError(f"synthesis.threshold={threshold} must lie in (-1, 1) (Perlin values).")
        self.threshold = float(threshold)
        self.rotation = float(rotation)

    def region(self, image: np.ndarray, rng: np.random.Generator, category: str | None) -> np.ndarray:
        """Boolean anomaly region: thresholded Perlin noise, restricted to the foreground if set."""
        mask = perlin_mask(image.shape[:2], rng, self.scales, self.threshold, self.rotation)
        if self.foreground is not None:
            mask &= self.foreground(image, category)
        return mask

    def synthesize(self, image: np.ndarray, rng: np.random.Generator,
                   category: str | None) -> tuple[np.ndarray, np.ndarray]:
        """Draw a region; if non-empty, blend a texture into it with a random β."""
        region = self.region(image, rng, category)
        if not region.any():
            return image, region
        source = self.texture(image.shape[:2], rng, category)
        beta = rng.uniform(*self.beta)
        return blend(image, source, region, beta), region

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(texture={self.texture!r}, foreground={self.foreground!r}, "
                f"beta={list(self.beta)}, normal_probability={self.normal_probability})")
