"""Perlin gradient noise and the DRAEM/RealNet thresholded, rotated Perlin mask (numpy + OpenCV)."""

from __future__ import annotations

import math

import cv2
import numpy as np


def _fade(t: np.ndarray) -> np.ndarray:
    return 6 * t**5 - 15 * t**4 + 10 * t**3


def perlin_noise(shape: tuple[int, int], res: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """2-D Perlin noise of ``shape`` with ``res`` gradient cells per axis, values about in [-1, 1].

    Unlike the DRAEM reference, ``shape`` need not be a multiple of ``res``: the field is made on the
    next multiple and cropped.
    """
    h, w = int(shape[0]), int(shape[1])
    ry, rx = max(1, int(res[0])), max(1, int(res[1]))
    big_h, big_w = -(-h // ry) * ry, -(-w // rx) * rx
    angles = 2 * math.pi * rng.random((ry + 1, rx + 1))
    gy, gx = np.cos(angles), np.sin(angles)  # each corner's gradient (y, x)
    ys = np.arange(h) * (ry / big_h)
    xs = np.arange(w) * (rx / big_w)
    rows, cols = ys.astype(np.int64), xs.astype(np.int64)
    yf, xf = (ys % 1.0)[:, None], (xs % 1.0)[None, :]

    def corner(dy: int, dx: int) -> np.ndarray:
        # the gradients of the cells' (dy, dx) corners: a row gather, then a column gather (far cheaper
        # than one broadcast 2-D fancy index)
        r, c = rows + dy, cols + dx
        return np.take(gy[r], c, axis=1) * (yf - dy) + np.take(gx[r], c, axis=1) * (xf - dx)

    ty, tx = _fade(yf), _fade(xf)
    c00, c10, c01, c11 = corner(0, 0), corner(1, 0), corner(0, 1), corner(1, 1)
    left = c00 + ty * (c10 - c00)
    right = c01 + ty * (c11 - c01)
    return (math.sqrt(2) * (left + tx * (right - left))).astype(np.float32)


def fractal_noise(shape: tuple[int, int], rng: np.random.Generator, base_res: int = 2,
                  octaves: int = 4, persistence: float = 0.5) -> np.ndarray:
    """Sum of ``octaves`` Perlin layers with doubling resolution, normalised to [0, 1]."""
    total = np.zeros(shape, np.float32)
    amp = 1.0
    for k in range(octaves):
        r = base_res * 2**k
        total += amp * perlin_noise(shape, (r, r), rng)
        amp *= persistence
    lo, hi = float(total.min()), float(total.max())
    return (total - lo) / max(hi - lo, 1e-6)


def rotate(field: np.ndarray, angle: float) -> np.ndarray:
    """Rotate a float field about its centre by ``angle`` degrees; uncovered corners become 0."""
    h, w = field.shape
    m = cv2.getRotationMatrix2D((w / 2.0, h / 2.0), float(angle), 1.0)
    return cv2.warpAffine(field, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                          borderValue=0.0)


def perlin_mask(shape: tuple[int, int], rng: np.random.Generator, scales: tuple[int, int] = (0, 5),
                threshold: float = 0.5, rotation: float = 90.0) -> np.ndarray:
    """DRAEM/RealNet anomaly region: Perlin noise with 2^U{scales} cells per axis (inclusive),
    rotated by U[-rotation, rotation] degrees, thresholded at ``threshold``. Returns bool H×W."""
    sy = 2 ** int(rng.integers(scales[0], scales[1] + 1))
    sx = 2 ** int(rng.integers(scales[0], scales[1] + 1))
    noise = perlin_noise(shape, (sy, sx), rng)
    if rotation:
        noise = rotate(noise, rng.uniform(-rotation, rotation))
    return noise > threshold
