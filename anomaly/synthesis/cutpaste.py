"""CutPaste and CutPaste-scar (Li et al., CVPR 2021): a colour-jittered patch of the image pasted elsewhere."""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np

from anomaly.synthesis.base import SynthesisConfigError, SynthesisStrategy, check_range
from anomaly.synthesis.foreground import Foreground

VARIANTS = ("cutpaste", "scar", "both")


def color_jitter(patch: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Brightness, contrast, saturation (factors U[1-s, 1+s]) and hue (shift U[-s, s] turns) jitter."""
    if strength <= 0:
        return patch
    x = patch.astype(np.float32) * rng.uniform(1 - strength, 1 + strength)
    grey = (x @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]
    x = (x - grey.mean()) * rng.uniform(1 - strength, 1 + strength) + grey.mean()
    grey = (x @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]
    x = (x - grey) * rng.uniform(1 - strength, 1 + strength) + grey
    out = np.clip(np.rint(x), 0, 255).astype(np.uint8)
    shift = int(round(rng.uniform(-strength, strength) * 180))
    if shift:
        hsv = cv2.cvtColor(out, cv2.COLOR_RGB2HSV)
        hsv[..., 0] = ((hsv[..., 0].astype(np.int32) + shift) % 180).astype(np.uint8)
        out = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    return out


class CutPaste(SynthesisStrategy):
    """CutPaste: cut a patch, jitter its colours, paste it at a random place; the mask is the pasted area.

    Args:
        variant: ``cutpaste`` (rectangle), ``scar`` (thin rotated strip) or ``both`` (50/50 per image).
        area: patch area as a fraction of the image, U[lo, hi] (paper: [0.02, 0.15]).
        aspect: patch aspect ratio range, log-uniform (paper: [0.3, 3.3]).
        scar_width: scar width range in pixels at 256 px, scaled with the image (paper: [2, 16]).
        scar_height: scar length range in pixels at 256 px, scaled with the image (paper: [10, 25]).
        scar_rotation: scars are rotated by U[-r, r] degrees (paper: 45).
        jitter: colour-jitter strength for brightness/contrast/saturation/hue (paper: 0.1).
        foreground: optional :class:`Foreground`; the pasted patch's centre is drawn from the object's pixels
            (not in the paper, which pastes anywhere: real defects lie on the object). The mask stays the
            whole pasted area, so it is exact.
        normal_probability: chance of leaving an image normal (see :class:`SynthesisStrategy`).
    """

    def __init__(self, variant: str = "both", area: Sequence[float] = (0.02, 0.15),
                 aspect: Sequence[float] = (0.3, 3.3), scar_width: Sequence[float] = (2, 16),
                 scar_height: Sequence[float] = (10, 25), scar_rotation: float = 45.0, jitter: float = 0.1,
                 foreground: Foreground | None = None, normal_probability: float = 0.5,
                 max_attempts: int = 8) -> None:
        super().__init__(normal_probability=normal_probability, max_attempts=max_attempts)
        self.foreground = foreground
        if variant not in VARIANTS:
            raise SynthesisConfigError(f"synthesis.variant={variant!r} is unknown; use one of {list(VARIANTS)}.")
        self.variant = variant
        self.area = check_range("synthesis.area", area, 1e-6, 1.0)
        self.aspect = check_range("synthesis.aspect", aspect, 1e-3, 1e3)
        self.scar_width = check_range("synthesis.scar_width", scar_width, 1, 4096)
        self.scar_height = check_range("synthesis.scar_height", scar_height, 1, 4096)
        self.scar_rotation = float(scar_rotation)
        if not 0.0 <= float(jitter) <= 0.5:
            raise SynthesisConfigError(f"synthesis.jitter={jitter} must lie in [0, 0.5] (paper: 0.1).")
        self.jitter = float(jitter)

    def _rectangle(self, h: int, w: int, rng: np.random.Generator) -> tuple[int, int]:
        area = rng.uniform(*self.area) * h * w
        ratio = math.exp(rng.uniform(math.log(self.aspect[0]), math.log(self.aspect[1])))
        pw = int(np.clip(round(math.sqrt(area * ratio)), 1, w))
        ph = int(np.clip(round(math.sqrt(area / ratio)), 1, h))
        return ph, pw

    def synthesize(self, image: np.ndarray, rng: np.random.Generator,
                   category: str | None) -> tuple[np.ndarray, np.ndarray]:
        """Cut, jitter and paste one patch (rectangle or scar)."""
        h, w = image.shape[:2]
        scar = self.variant == "scar" or (self.variant == "both" and rng.random() < 0.5)
        if scar:
            scale = min(h, w) / 256.0
            pw = int(np.clip(round(rng.uniform(*self.scar_width) * scale), 1, w))
            ph = int(np.clip(round(rng.uniform(*self.scar_height) * scale), 1, h))
        else:
            ph, pw = self._rectangle(h, w, rng)
        y0, x0 = int(rng.integers(0, h - ph + 1)), int(rng.integers(0, w - pw + 1))
        patch = color_jitter(image[y0:y0 + ph, x0:x0 + pw], rng, self.jitter)
        alpha = np.ones((ph, pw), np.uint8)
        if scar and self.scar_rotation:
            patch, alpha = self._rotate(patch, alpha, rng.uniform(-self.scar_rotation, self.scar_rotation))
            patch, alpha = patch[: h, : w], alpha[: h, : w]
        ph, pw = alpha.shape
        y1, x1 = self._paste_corner(image, category, ph, pw, rng)
        region = np.zeros((h, w), bool)
        region[y1:y1 + ph, x1:x1 + pw] = alpha.astype(bool)
        out = image.copy()
        window = out[y1:y1 + ph, x1:x1 + pw]
        window[alpha.astype(bool)] = patch[alpha.astype(bool)]
        return out, region

    def _paste_corner(self, image: np.ndarray, category: str | None, ph: int, pw: int,
                      rng: np.random.Generator) -> tuple[int, int]:
        """Top-left corner of the paste: uniform over the image, or centred on a random object pixel
        (clipped so the patch stays inside the image) when a foreground is set."""
        h, w = image.shape[:2]
        if self.foreground is None:
            return int(rng.integers(0, h - ph + 1)), int(rng.integers(0, w - pw + 1))
        ys, xs = np.nonzero(self.foreground(image, category))
        k = int(rng.integers(0, len(ys)))
        return (int(np.clip(ys[k] - ph // 2, 0, h - ph)), int(np.clip(xs[k] - pw // 2, 0, w - pw)))

    @staticmethod
    def _rotate(patch: np.ndarray, alpha: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
        """Rotate a patch and its alpha into an enlarged box (nearest neighbour: exact mask)."""
        ph, pw = alpha.shape
        rad = math.radians(angle)
        bw = int(math.ceil(abs(pw * math.cos(rad)) + abs(ph * math.sin(rad))))
        bh = int(math.ceil(abs(pw * math.sin(rad)) + abs(ph * math.cos(rad))))
        m = cv2.getRotationMatrix2D((pw / 2.0, ph / 2.0), angle, 1.0)
        m[0, 2] += bw / 2.0 - pw / 2.0
        m[1, 2] += bh / 2.0 - ph / 2.0
        kw = {"flags": cv2.INTER_NEAREST, "borderMode": cv2.BORDER_CONSTANT, "borderValue": 0}
        return cv2.warpAffine(patch, m, (bw, bh), **kw), cv2.warpAffine(alpha, m, (bw, bh), **kw)

    def __repr__(self) -> str:
        return (f"CutPaste(variant={self.variant!r}, foreground={self.foreground!r}, "
                f"normal_probability={self.normal_probability})")
