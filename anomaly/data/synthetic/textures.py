"""Texture categories: a twill-woven fabric and a wood board, each with random phase and fibres."""

from __future__ import annotations

import numpy as np

from anomaly.data.synthetic.fields import Scene, grid, smooth_field, smoothstep, streak_noise

DENIM_WARP = np.array([52.0, 72.0, 118.0], np.float32)
DENIM_WEFT = np.array([196.0, 192.0, 178.0], np.float32)
WOOD_EARLY = np.array([206.0, 160.0, 112.0], np.float32)
WOOD_LATE = np.array([160.0, 108.0, 66.0], np.float32)


def fabric(rng: np.random.Generator, size: int) -> Scene:
    """Denim-like 2/1 twill: indigo warp over off-white weft, uneven yarns, random phase and angle."""
    s = size / 256.0
    yy, xx = grid(size)
    angle = np.deg2rad(rng.uniform(-1.5, 1.5))
    period = rng.uniform(7.8, 8.2) * s
    u = (xx * np.cos(angle) + yy * np.sin(angle)) / period + rng.uniform(0, 3)
    v = (-xx * np.sin(angle) + yy * np.cos(angle)) / period + rng.uniform(0, 3)
    i, j = np.floor(u), np.floor(v)
    fu, fv = u - i, v - j
    warp_on_top = np.mod(i - j, 3) != 0
    yarn_w = 1.0 + 0.05 * rng.standard_normal(64, dtype=np.float32)
    yarn_f = 1.0 + 0.05 * rng.standard_normal(64, dtype=np.float32)
    slub_w = streak_noise(rng, size, 14 * s, 0.6 * s, vertical=True)
    slub_f = streak_noise(rng, size, 14 * s, 0.6 * s, vertical=False)
    sin_u, sin_v = np.sin(np.pi * fu), np.sin(np.pi * fv)
    shade_w = (
        (0.3 + 0.7 * np.sqrt(sin_u))
        * (0.82 + 0.18 * sin_v)
        * yarn_w[i.astype(np.int32) & 63]
        * (1.0 + 0.06 * slub_w)
    )
    shade_f = (
        (0.3 + 0.7 * np.sqrt(sin_v))
        * (0.82 + 0.18 * sin_u)
        * yarn_f[j.astype(np.int32) & 63]
        * (1.0 + 0.06 * slub_f)
    )
    shade = np.where(warp_on_top, shade_w, shade_f) * (1.0 + 0.05 * smooth_field(rng, size, 4))
    warp = DENIM_WARP * (1.0 + rng.normal(0, 0.03, 3).astype(np.float32))
    weft = DENIM_WEFT * (1.0 + rng.normal(0, 0.02, 3).astype(np.float32))
    image = shade[..., None] * (weft + warp_on_top[..., None] * (warp - weft))
    return Scene(background=image.astype(np.float32), info={"period": period})


def wood(rng: np.random.Generator, size: int) -> Scene:
    """A flat-sawn board: wavy vertical growth rings, latewood bands, fibre streaks and pores."""
    s = size / 256.0
    yy, xx = grid(size)
    angle = np.deg2rad(rng.uniform(-4.0, 4.0))
    across = xx * np.cos(angle) - yy * np.sin(angle)
    period = rng.uniform(15.0, 22.0) * s
    warp = 0.45 * smooth_field(rng, size, 2) + 0.1 * smooth_field(rng, size, 5)
    t = across / period + rng.uniform(0.7, 1.3) * warp + rng.uniform(0, 1)
    ring = t - np.floor(t)
    late = smoothstep(0.45, 0.82, ring) * (1.0 - smoothstep(0.9, 1.0, ring))
    fibre = streak_noise(rng, size, 12 * s, 0.5 * s, vertical=True)
    pores = np.maximum(streak_noise(rng, size, 4 * s, 0.4 * s, vertical=True) - 1.6, 0)
    base = WOOD_EARLY * (1.0 + rng.normal(0, 0.03, 3).astype(np.float32))
    dark = WOOD_LATE * (1.0 + rng.normal(0, 0.03, 3).astype(np.float32))
    image = base + (dark - base) * late[..., None]
    shade = 1.0 + 0.05 * fibre - 0.12 * pores * (0.4 + late) + 0.04 * smooth_field(rng, size, 3)
    return Scene(background=(image * shade[..., None]).astype(np.float32), info={"period": period})
