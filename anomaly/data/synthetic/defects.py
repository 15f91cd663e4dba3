"""Defects drawn onto a copy of a normal scene; the caller derives the exact mask from the change."""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

from anomaly.data.synthetic.fields import Array, Scene, blob, draw_polyline, draw_tapered, grid, walk

Defect = Callable[[Scene, np.random.Generator], Scene]
MARGIN = 0.2  # defects stay in the central part that survives a 224/256 centre crop


def _scale(scene: Scene) -> float:
    """Defect size unit: 1 at 256 px, proportional below, floored so defects stay visible when tiny."""
    return max(scene.size / 256.0, 0.5)


def _pick(scene: Scene, rng: np.random.Generator, inset: float = 0.0) -> tuple[float, float]:
    """A random ``(y, x)`` on the surface, at least ``inset`` px inside the object's outline."""
    size = scene.size
    lo, hi = MARGIN * size, (1 - MARGIN) * size
    if scene.alpha is None:
        return rng.uniform(lo, hi), rng.uniform(lo, hi)
    inside = (scene.alpha > 0.5).astype(np.uint8)
    depth = cv2.distanceTransform(inside, cv2.DIST_L2, 3)
    central = depth[int(lo) : int(hi) + 1, int(lo) : int(hi) + 1]
    ys, xs = np.nonzero(central >= min(max(inset, 1.0), 0.6 * float(central.max())))
    k = rng.integers(len(ys))
    return float(ys[k] + int(lo)), float(xs[k] + int(lo))


def _pick_edge(scene: Scene, rng: np.random.Generator) -> tuple[tuple[float, float], Array]:
    """A random point on the object's outline and the outward unit normal ``(ny, nx)`` there."""
    assert scene.alpha is not None, "outline defects need an object scene"
    ys, xs = np.nonzero((scene.alpha > 0.35) & (scene.alpha < 0.65))
    size = scene.size
    keep = (ys > 0.1 * size) & (ys < 0.9 * size) & (xs > 0.1 * size) & (xs < 0.9 * size)
    k = rng.integers(keep.sum())
    y, x = int(ys[keep][k]), int(xs[keep][k])
    smooth = cv2.GaussianBlur(scene.alpha, (0, 0), 2.0)
    gy = cv2.Sobel(smooth, cv2.CV_32F, 0, 1, ksize=3)[y, x]
    gx = cv2.Sobel(smooth, cv2.CV_32F, 1, 0, ksize=3)[y, x]
    normal = -np.array([gy, gx]) / (np.hypot(gy, gx) + 1e-9)
    return (float(y), float(x)), normal


def _on_surface(scene: Scene, cover: Array) -> Array:
    return cover * scene.surface


def scratch(
    scene: Scene,
    rng: np.random.Generator,
    width: tuple[float, float] = (1.0, 1.8),
    contrast: tuple[float, float] = (0.3, 0.5),
) -> Scene:
    """A thin, gently curved line, lighter (scraped) or darker (scored) than the surface."""
    s = _scale(scene)
    start = _pick(scene, rng, 6 * s)
    curve = walk(
        rng,
        start,
        rng.uniform(0, 2 * np.pi),
        rng.uniform(30, 60) * s,
        1.5 * s,
        0.03,
        rng.uniform(-0.03, 0.03),
    )
    cover = _on_surface(
        scene, draw_polyline(scene.size, curve, rng.uniform(*width) * s) * rng.uniform(0.75, 1.0)
    )
    change = rng.uniform(*contrast)
    bright = rng.random() < 0.6 and scene.surface_layer()[int(start[0]), int(start[1])].mean() < 150
    factor = 1.0 + change if bright else 1.0 - 0.9 * change
    scene.paint(cover, scene.surface_layer() * factor)
    return scene


def crack(scene: Scene, rng: np.random.Generator, along: float | None = None) -> Scene:
    """A dark, jagged, branching fissure that thins towards its tips."""
    s = _scale(scene)
    start = _pick(scene, rng, 6 * s)
    angle = (
        rng.uniform(0, 2 * np.pi) if along is None else along + rng.normal(0, 0.25) + np.pi * rng.integers(2)
    )
    main = walk(rng, start, angle, rng.uniform(25, 60) * s, 1.5 * s, 0.22)
    cover = draw_tapered(scene.size, main, rng.uniform(1.6, 2.4) * s, 0.6 * s)
    for _ in range(rng.integers(1, 4)):
        root = main[rng.integers(len(main) // 5, len(main))]
        branch = walk(
            rng,
            (root[1], root[0]),
            angle + rng.choice([-1, 1]) * rng.uniform(0.5, 1.1),
            rng.uniform(0.2, 0.45) * len(main) * 1.5 * s,
            1.5 * s,
            0.25,
        )
        np.maximum(cover, draw_tapered(scene.size, branch, 1.2 * s, 0.5 * s), out=cover)
    cover = _on_surface(scene, cover)
    scene.paint(cover, scene.surface_layer() * rng.uniform(0.3, 0.5))
    return scene


def hole(scene: Scene, rng: np.random.Generator, radius: tuple[float, float] = (2.5, 5.0)) -> Scene:
    """A small pit or puncture: a dark irregular hollow with a lighter raised lip."""
    s = _scale(scene)
    center = _pick(scene, rng, 8 * s)
    size = rng.uniform(*radius) * s
    pit = blob(rng, scene.size, center, size, 0.35, 0.2)
    lip = np.clip(blob(rng, scene.size, center, size * 1.6, 0.25, 0.35) - pit, 0, 1)
    layer = scene.surface_layer()
    scene.paint(_on_surface(scene, lip * 0.6), layer * 1.2)
    scene.paint(_on_surface(scene, pit), layer * rng.uniform(0.15, 0.3))
    return scene


def stain(
    scene: Scene,
    rng: np.random.Generator,
    tints: tuple[tuple[float, float, float], ...] | None = None,
    radius: tuple[float, float] = (8.0, 18.0),
    strength: tuple[float, float] = (0.7, 0.95),
) -> Scene:
    """A soft-edged discoloured patch (liquid, oil, rust), with a slightly darker drying rim."""
    s = _scale(scene)
    center = _pick(scene, rng, 10 * s)
    tints = tints or ((0.8, 0.74, 0.64), (0.86, 0.86, 0.9), (1.1, 1.06, 0.95))
    tint = np.asarray(tints[rng.integers(len(tints))], np.float32)
    size = rng.uniform(*radius) * s
    patch = blob(rng, scene.size, center, size, 0.4, 0.45, aspect=rng.uniform(1.0, 1.6))
    rim = np.clip(patch * (1 - patch) * 4, 0, 1) * 0.4
    cover = _on_surface(scene, np.clip(patch * rng.uniform(*strength) + rim, 0, 1))
    scene.paint(cover, scene.surface_layer() * tint)
    return scene


def contamination(
    scene: Scene,
    rng: np.random.Generator,
    scale: float = 1.0,
    dark_share: float = 0.6,
    speck: tuple[float, float] = (2.5, 4.5),
) -> Scene:
    """A foreign particle lying on top: a stray fibre or a small speck, with its soft shadow.

    ``scale`` multiplies its size, ``speck`` is the speck radius range (px at 256), ``dark_share``
    the chance it is dark (else light lint).
    """
    s = _scale(scene) * scale
    y, x = _pick(scene, rng, 2 * s)
    if rng.random() < 0.5:
        curve = walk(rng, (y, x), rng.uniform(0, 2 * np.pi), rng.uniform(20, 45) * s, 1.5 * s, 0.12)
        cover = draw_polyline(scene.size, curve, rng.uniform(1.2, 2.0) * s)
    else:
        cover = blob(rng, scene.size, (y, x), rng.uniform(*speck) * s, 0.5, 0.25, aspect=rng.uniform(1, 2))
    dark = rng.random() < dark_share
    color = np.array([45.0, 38.0, 32.0] if dark else [228.0, 224.0, 212.0], np.float32) * rng.uniform(
        0.85, 1.1
    )
    shift = np.float32([[1, 0, 1.5 * s], [0, 1, 1.5 * s]])
    shadow = cv2.GaussianBlur(cv2.warpAffine(cover, shift, (scene.size, scene.size)), (0, 0), 1.2 * s)
    for layer in (scene.background, scene.color):
        if layer is not None:
            layer *= 1.0 - 0.35 * shadow[..., None]
    texture = 1.0 + 0.12 * rng.standard_normal((scene.size, scene.size, 1)).astype(np.float32)
    scene.paint_over(cover, color * texture)
    return scene


def missing(scene: Scene, rng: np.random.Generator, radius: tuple[float, float] = (5.0, 9.0)) -> Scene:
    """A chipped-off piece at the outline: the object is gone inside a jagged bite."""
    s = _scale(scene)
    (y, x), normal = _pick_edge(scene, rng)
    size = rng.uniform(*radius) * s
    center = (y + 0.35 * size * normal[0], x + 0.35 * size * normal[1])
    bite = blob(rng, scene.size, center, size, 0.45, 0.06)
    assert scene.alpha is not None
    scene.alpha *= 1.0 - bite
    return scene


def deformation(scene: Scene, rng: np.random.Generator, amount: tuple[float, float] = (3.0, 5.5)) -> Scene:
    """A local dent (or bulge) of the outline: the object layer is warped around one outline point."""
    s = _scale(scene)
    (y, x), normal = _pick_edge(scene, rng)
    shift = rng.uniform(*amount) * s * (1 if rng.random() < 0.7 else -0.8)
    sigma = rng.uniform(5.0, 9.0) * s
    yy, xx = grid(scene.size)
    weight = np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * sigma**2)) * shift
    map_x = (xx + weight * normal[1]).astype(np.float32)
    map_y = (yy + weight * normal[0]).astype(np.float32)
    assert scene.color is not None and scene.alpha is not None
    scene.color = cv2.remap(scene.color, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    scene.alpha = cv2.remap(scene.alpha, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    return scene
