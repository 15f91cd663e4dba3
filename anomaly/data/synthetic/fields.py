"""Procedural building blocks: random fields, shapes, curves and the layered scene they paint into."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import lru_cache

import cv2
import numpy as np

Array = np.ndarray


@lru_cache(maxsize=8)
def _grid(size: int) -> tuple[Array, Array]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    yy.setflags(write=False)
    xx.setflags(write=False)
    return yy, xx


def grid(size: int) -> tuple[Array, Array]:
    """Pixel-centre coordinates ``(y, x)`` of a ``size``×``size`` image (read-only, cached)."""
    return _grid(size)


def smoothstep(edge0: float, edge1: float, x: Array) -> Array:
    """Hermite step from 0 at ``edge0`` to 1 at ``edge1`` (edges may be in either order)."""
    t = np.asarray((x - edge0) * (1.0 / (edge1 - edge0)))
    np.maximum(t, 0.0, out=t)
    np.minimum(t, 1.0, out=t)
    return t * t * (3.0 - 2.0 * t)


def _standardise(field: Array) -> Array:
    mean, std = cv2.meanStdDev(field)
    return (field - np.float32(mean[0, 0])) * np.float32(1.0 / (std[0, 0] + 1e-6))


def smooth_field(rng: np.random.Generator, size: int, cells: int) -> Array:
    """Smooth random field (about ``cells`` bumps per side), zero mean, unit standard deviation."""
    coarse = rng.standard_normal((cells + 1, cells + 1), dtype=np.float32)
    return _standardise(cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC))


def streak_noise(rng: np.random.Generator, size: int, along: float, across: float, vertical: bool) -> Array:
    """White noise blurred anisotropically: fibres ``along`` px long and ``across`` px wide, unit std.

    Drawn at reduced resolution along the fibres (they are smooth that way), then stretched.
    """
    factor = max(1, int(along / 3))
    short = -(-size // factor)
    shape = (short, size) if vertical else (size, short)
    noise = rng.standard_normal(shape, dtype=np.float32)
    sx, sy = (across, along / factor) if vertical else (along / factor, across)
    out = cv2.GaussianBlur(
        noise, (0, 0), sigmaX=max(sx, 0.3), sigmaY=max(sy, 0.3), borderType=cv2.BORDER_REFLECT
    )
    out = cv2.resize(out, (size, size), interpolation=cv2.INTER_LINEAR)
    return _standardise(out)


def blob(
    rng: np.random.Generator,
    size: int,
    center: tuple[float, float],
    radius: float,
    irregularity: float = 0.25,
    softness: float = 0.1,
    aspect: float = 1.0,
) -> Array:
    """Irregular blob coverage in [0, 1]: 1 inside, soft edge of relative width ``softness``.

    ``center`` is ``(y, x)``; ``aspect`` > 1 squeezes the blob across a random direction.
    """
    angle = rng.uniform(0, np.pi)
    harmonics = [(irregularity / k * rng.uniform(0.3, 1.0), rng.uniform(0, 2 * np.pi)) for k in range(2, 7)]
    out = np.zeros((size, size), np.float32)
    reach = radius * (1.0 + softness) * (1.0 + irregularity) * 1.2 + 2
    y0, y1 = max(int(center[0] - reach), 0), min(int(center[0] + reach) + 2, size)
    x0, x1 = max(int(center[1] - reach), 0), min(int(center[1] + reach) + 2, size)
    if y0 >= y1 or x0 >= x1:
        return out
    yy, xx = grid(size)
    dx, dy = xx[y0:y1, x0:x1] - center[1], yy[y0:y1, x0:x1] - center[0]
    u = dx * np.cos(angle) + dy * np.sin(angle)
    v = (-dx * np.sin(angle) + dy * np.cos(angle)) * aspect
    theta = np.arctan2(v, u)
    wobble = np.ones_like(theta)
    for k, (amplitude, phase) in enumerate(harmonics, start=2):
        wobble += amplitude * np.cos(k * theta + phase)
    distance = np.sqrt(u * u + v * v) / (radius * np.maximum(wobble, 0.3))
    out[y0:y1, x0:x1] = 1.0 - smoothstep(1.0 - softness, 1.0 + softness, distance)
    return out


def walk(
    rng: np.random.Generator,
    start: tuple[float, float],
    angle: float,
    length: float,
    step: float = 1.5,
    turn: float = 0.08,
    drift: float = 0.0,
) -> Array:
    """A random walk of ``length`` px as (N, 2) points ``(x, y)``; ``turn`` is the angle jitter per step."""
    n = max(int(length / step), 2)
    angles = angle + np.cumsum(rng.normal(drift, turn, n))
    steps = np.stack([np.cos(angles), np.sin(angles)], axis=1) * step
    return np.asarray(start[::-1], np.float64) + np.concatenate([np.zeros((1, 2)), np.cumsum(steps, axis=0)])


def draw_polyline(size: int, points: Array, thickness: float) -> Array:
    """Anti-aliased coverage in [0, 1] of a polyline (``(x, y)`` points) of the given thickness."""
    canvas = np.zeros((size, size), np.uint8)
    whole = max(int(round(thickness)), 1)
    pts = np.round(points * 16).astype(np.int32).reshape(-1, 1, 2)
    cv2.polylines(canvas, [pts], False, 255, whole, cv2.LINE_AA, shift=4)
    cover = canvas.astype(np.float32) / 255.0
    if thickness < 1.0:
        cover *= thickness
    return cover


def draw_tapered(size: int, points: Array, start: float, end: float) -> Array:
    """Coverage of a polyline whose thickness goes linearly from ``start`` to ``end`` px."""
    cover = np.zeros((size, size), np.float32)
    chunks = max(len(points) // 6, 1)
    for k, part in enumerate(np.array_split(np.arange(len(points)), chunks)):
        seg = points[max(part[0] - 1, 0) : part[-1] + 1]
        if len(seg) < 2:
            continue
        width = start + (end - start) * k / max(chunks - 1, 1)
        np.maximum(cover, draw_polyline(size, seg, width), out=cover)
    return cover


@dataclass
class Scene:
    """A render in layers, so defects can change the surface, the shape or the whole picture.

    Attributes:
        background: H×W×3 float32 radiance of the background (a texture, or the table under an object).
        color: H×W×3 float32 radiance of the object layer (``None`` for texture categories).
        alpha: H×W float32 coverage of the object layer (``None`` for texture categories).
        info: pose facts for placing defects (e.g. ``center``, ``axis``, ``light``).
    """

    background: Array
    color: Array | None = None
    alpha: Array | None = None
    info: dict = field(default_factory=dict)

    @property
    def size(self) -> int:
        return self.background.shape[0]

    @property
    def surface(self) -> Array:
        """Where defects on the object's (or texture's) surface may go: H×W float32 in [0, 1]."""
        return np.ones(self.background.shape[:2], np.float32) if self.alpha is None else self.alpha

    def paint(self, cover: Array, target: Array) -> None:
        """Blend ``target`` (H×W×3 or 3) into the surface layer with coverage ``cover`` (H×W)."""
        layer = self.background if self.color is None else self.color
        layer += cover[..., None] * (target - layer)

    def paint_over(self, cover: Array, target: Array) -> None:
        """Blend ``target`` over the whole picture (both layers), e.g. a particle lying on top."""
        for layer in (self.background, self.color):
            if layer is not None:
                layer += cover[..., None] * (target - layer)

    def surface_layer(self) -> Array:
        """The layer surface defects change: the object's colour, or the texture."""
        return self.background if self.color is None else self.color

    def compose(self) -> Array:
        """The picture: the object layer over the background."""
        if self.color is None or self.alpha is None:
            return self.background.copy()
        a = self.alpha[..., None]
        return self.background * (1.0 - a) + self.color * a

    def copy(self) -> Scene:
        return replace(
            self,
            background=self.background.copy(),
            color=None if self.color is None else self.color.copy(),
            alpha=None if self.alpha is None else self.alpha.copy(),
            info=dict(self.info),
        )
