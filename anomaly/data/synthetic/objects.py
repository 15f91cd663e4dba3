"""Object categories: a steel washer (round) and a two-tone capsule (elongated), each in a random pose."""

from __future__ import annotations

import cv2
import numpy as np

from anomaly.data.synthetic.fields import Array, Scene, grid, smooth_field, smoothstep, streak_noise

STEEL = np.array([150.0, 154.0, 160.0], np.float32)
BELT = np.array([64.0, 67.0, 70.0], np.float32)
CAP = np.array([178.0, 44.0, 40.0], np.float32)
BODY = np.array([232.0, 226.0, 208.0], np.float32)
TRAY = np.array([150.0, 160.0, 170.0], np.float32)


def _shadow(background: Array, alpha: Array, offset: tuple[float, float], blur: float, depth: float) -> Array:
    """Darken ``background`` under a soft copy of ``alpha`` shifted by ``offset`` (dx, dy)."""
    shift = np.float32([[1, 0, offset[0]], [0, 1, offset[1]]])
    size = alpha.shape[0]
    cast = cv2.warpAffine(alpha, shift, (size, size), borderMode=cv2.BORDER_CONSTANT)
    cast = cv2.GaussianBlur(cast, (0, 0), blur)
    return background * (1.0 - depth * cast[..., None])


def washer(rng: np.random.Generator, size: int) -> Scene:
    """A flat steel washer on a dark belt: slight tilt and shift, turned rings, light from a random side."""
    s = size / 256.0
    yy, xx = grid(size)
    cy, cx = size / 2 + rng.uniform(-6, 6) * s, size / 2 + rng.uniform(-6, 6) * s
    outer = 0.33 * size * rng.uniform(0.985, 1.015)
    inner = outer * rng.uniform(0.41, 0.45)
    tilt, squash = rng.uniform(0, np.pi), rng.uniform(0.96, 1.0)
    dx, dy = xx - cx, yy - cy
    a = dx * np.cos(tilt) + dy * np.sin(tilt)
    b = (-dx * np.sin(tilt) + dy * np.cos(tilt)) / squash
    rho = np.sqrt(a * a + b * b)
    theta = np.arctan2(dy, dx)
    alpha = smoothstep(outer + 0.7, outer - 0.7, rho) * smoothstep(inner - 0.7, inner + 0.7, rho)
    light = rng.uniform(-np.pi, np.pi)
    rim_out = np.exp(-(((outer - rho) / (3.5 * s)) ** 2))
    rim_in = np.exp(-(((rho - inner) / (3.0 * s)) ** 2))
    facing = np.cos(theta - light)
    profile = cv2.GaussianBlur(rng.standard_normal((1, size + 2), dtype=np.float32), (0, 0), 0.8 * s)[0]
    ring = np.minimum(rho, size).astype(np.int32)
    turned = profile[ring] + (rho - ring) * (profile[ring + 1] - profile[ring])  # turning marks by radius
    # angle from the side facing away from the light
    away = np.arctan2(-np.sin(theta - light), -np.cos(theta - light))
    sheen = np.exp(-((away / 0.6) ** 2)) * smoothstep(inner, outer, rho)
    shade = (
        1.0
        + 0.28 * rim_out * facing
        - 0.22 * rim_in * facing
        + 0.035 * turned
        + rng.uniform(0.15, 0.3) * sheen
        + 0.04 * smooth_field(rng, size, 3)
    )
    color = STEEL[None, None, :] * shade[..., None]
    belt = BELT * (1.0 + rng.normal(0, 0.015, 3).astype(np.float32))
    grain = 0.05 * streak_noise(rng, size, 6 * s, 0.6 * s, vertical=False) + 0.03 * smooth_field(rng, size, 6)
    background = belt[None, None, :] * (1.0 + grain[..., None])
    offset = (-3.0 * s * np.cos(light), -3.0 * s * np.sin(light))
    background = _shadow(background, alpha, offset, 2.5 * s, 0.45)
    info = {"center": (cy, cx), "radius": outer, "inner": inner, "light": light}
    return Scene(background.astype(np.float32), color.astype(np.float32), alpha.astype(np.float32), info)


def _imprint(rng: np.random.Generator, length: int, width: int) -> Array:
    """The capsule's printed code in its own frame (rows across, columns along the axis), in [0, 1]."""
    canvas = np.zeros((width, length), np.uint8)
    scale = width / 40.0
    origin = (int(length * 0.56 + rng.uniform(-1, 1) * scale), int(width * 0.64 + rng.uniform(-1, 1) * scale))
    cv2.putText(
        canvas, "500", origin, cv2.FONT_HERSHEY_SIMPLEX, 0.7 * scale, 255, max(int(2 * scale), 1), cv2.LINE_AA
    )
    return canvas.astype(np.float32) / 255.0


def capsule(rng: np.random.Generator, size: int) -> Scene:
    """A red/ivory hard capsule on a grey tray: small shift and turn, cylinder shading, printed code."""
    s = size / 256.0
    yy, xx = grid(size)
    cy, cx = size / 2 + rng.uniform(-5, 5) * s, size / 2 + rng.uniform(-5, 5) * s
    turn = np.deg2rad(rng.uniform(-7, 7))
    half = 0.32 * size * rng.uniform(0.99, 1.01)
    radius = 0.105 * size * rng.uniform(0.99, 1.01)
    dx, dy = xx - cx, yy - cy
    u = dx * np.cos(turn) + dy * np.sin(turn)
    v = -dx * np.sin(turn) + dy * np.cos(turn)
    seam = -0.06 * 2 * half
    cap_r = radius * 1.035
    q_body = np.maximum(np.abs(u) - (half - radius), 0)
    body_d = np.sqrt(q_body**2 + v**2) - radius
    q_cap = np.maximum(-(u + half - cap_r), 0)
    on_cap = u < seam
    cap_d = np.where(on_cap, np.sqrt(q_cap**2 + v**2) - cap_r, 1e3)
    dist = np.minimum(body_d, cap_d)
    alpha = smoothstep(0.7, -0.7, dist)
    r_here = np.where(on_cap & (cap_d < body_d + 0.5), cap_r, radius)
    q_here = np.where(on_cap & (cap_d < body_d + 0.5), q_cap, q_body)
    nx = np.sign(u) * q_here / r_here
    ny = v / r_here
    nz = np.sqrt(np.clip(1.0 - nx**2 - ny**2, 0.0, 1.0))
    elevation = rng.uniform(0.25, 0.45)
    azimuth = -np.pi / 2 + rng.uniform(-0.35, 0.35)
    lx, ly, lz = np.cos(azimuth) * elevation, np.sin(azimuth) * elevation, np.sqrt(1 - elevation**2)
    diffuse = np.clip(nx * lx + ny * ly + nz * lz, 0, 1)
    half_x, half_y, half_z = lx, ly, lz + 1.0
    norm = np.sqrt(half_x**2 + half_y**2 + half_z**2)
    spec = np.clip((nx * half_x + ny * half_y + nz * half_z) / norm, 0, 1)
    for _ in range(3):  # ** 8 by squaring (pow is slow), then ** 5 below: ** 40
        spec = spec * spec
    spec = spec * spec * spec * spec * spec
    base = np.where(
        on_cap[..., None], CAP * (1.0 + rng.normal(0, 0.03, 3)), BODY * (1.0 + rng.normal(0, 0.015, 3))
    )
    seam_line = np.exp(-(((u - seam) / (1.0 * s)) ** 2)) * (np.abs(v) < cap_r)
    shade = (0.35 + 0.65 * diffuse) * (1.0 - 0.35 * seam_line) + 0.01 * smooth_field(rng, size, 8)
    color = base.astype(np.float32) * shade[..., None] + 90.0 * spec[..., None]
    print_map = cv2.remap(
        _imprint(rng, int(2 * half) + 2, int(2 * radius) + 2),
        (u + half).astype(np.float32),
        (v + radius).astype(np.float32),
        cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
    )
    ink = np.array([40.0, 40.0, 44.0], np.float32)
    color = color + (print_map * rng.uniform(0.75, 0.95) * (u > seam))[..., None] * (ink - color)
    tray = TRAY * (1.0 + rng.normal(0, 0.012, 3).astype(np.float32))
    background = tray[None, None, :] * (1.0 + 0.03 * smooth_field(rng, size, 5)[..., None])
    offset = (-4.0 * s * lx / elevation, -4.0 * s * ly / elevation)
    background = _shadow(background, alpha, offset, 3.0 * s, 0.35)
    info = {"center": (cy, cx), "turn": turn, "half": half, "radius": radius, "seam": seam}
    return Scene(background.astype(np.float32), color.astype(np.float32), alpha.astype(np.float32), info)
