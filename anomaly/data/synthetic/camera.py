"""The imaging step shared by a normal image and its defective twin: light, optics, sensor noise."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from anomaly.data.synthetic.fields import Array


@dataclass(frozen=True)
class Camera:
    """One image's photometry, drawn once and applied to both the clean and the defective scene.

    Attributes:
        gain: H×W×3 multiplicative light field (global gain, gradient, colour cast, vignetting).
        blur: optical blur sigma in pixels.
        noise: H×W×3 additive sensor noise in grey levels.
    """

    gain: Array
    blur: float
    noise: Array

    @classmethod
    def draw(cls, rng: np.random.Generator, size: int) -> Camera:
        """Random lighting (±10 % gain, up to 8 % gradient), blur and noise (σ 1.5–3 levels)."""
        coarse = 17  # the light is smooth: compute it on a coarse grid, then resize
        yy, xx = np.mgrid[0:coarse, 0:coarse].astype(np.float32) / (coarse - 1) - 0.5
        direction = rng.uniform(0, 2 * np.pi)
        ramp = xx * np.cos(direction) + yy * np.sin(direction)
        light = (
            rng.uniform(0.9, 1.1)
            * (1.0 + rng.uniform(0.0, 0.16) * ramp)
            * (1.0 - rng.uniform(0.0, 0.08) * 4 * (xx * xx + yy * yy))
            * (1.0 + 0.02 * cv2.resize(rng.standard_normal((3, 3), dtype=np.float32), (coarse, coarse)))
        )
        cast = (1.0 + rng.normal(0.0, 0.015, 3)).astype(np.float32)
        gain = cv2.resize(light[..., None] * cast, (size, size), interpolation=cv2.INTER_LINEAR)
        sigma = rng.uniform(1.5, 3.0)
        # Triangular noise (sum of two uniforms, unit variance): close to Gaussian, 6x cheaper to draw.
        own = rng.random((size, size, 3), dtype=np.float32)
        own += rng.random((size, size, 3), dtype=np.float32)
        own = (own - 1.0) * np.float32(np.sqrt(6.0))
        common = (own[..., 0] + own[..., 1] + own[..., 2])[..., None] * np.float32(1 / 3)
        noise = np.float32(0.6 * sigma) * own + np.float32(0.8 * sigma) * common
        return cls(gain=gain, blur=float(rng.uniform(0.45, 0.75) * size / 256.0), noise=noise)

    def shoot(self, radiance: Array) -> Array:
        """Radiance (H×W×3 float, 0–255 scale) → uint8 RGB image."""
        lit = radiance * self.gain
        if self.blur > 0.2:
            lit = cv2.GaussianBlur(lit, (0, 0), self.blur, borderType=cv2.BORDER_REFLECT)
        return np.clip(np.rint(lit + self.noise), 0, 255).astype(np.uint8)
