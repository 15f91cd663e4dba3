"""A picture of what a synthesis strategy makes: rows of (normal image, synthetic anomaly, mask overlay).

The command is ``python -m anomaly.gallery``; this module builds and writes the grid.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig

from anomaly.synthesis.base import SynthesisConfigError, SynthesisStrategy
from anomaly.synthesis.textures import EmptyTextureFolderError, list_images, load_rgb
from anomaly.utils.atomic import atomic_open

log = logging.getLogger(__name__)


def overlay(image: np.ndarray, mask: np.ndarray, colour: Sequence[int] = (0, 255, 0)) -> np.ndarray:
    """The image with the mask tinted in ``colour`` and its outline drawn."""
    region = mask > 0
    out = image.astype(np.float32)
    out[region] = 0.5 * out[region] + 0.5 * np.asarray(colour, np.float32)
    out = np.clip(out, 0, 255).astype(np.uint8)
    contours, _ = cv2.findContours(region.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    return cv2.drawContours(np.ascontiguousarray(out), contours, -1, tuple(int(c) for c in colour), 1)


def gallery_grid(strategy: SynthesisStrategy, images: Sequence[np.ndarray], rng: np.random.Generator,
                 category: str | None = None, always_anomalous: bool = True, gap: int = 2) -> np.ndarray:
    """Stack one row per image: original | synthetic | mask overlay (uint8 RGB).

    Args:
        strategy: the synthesis strategy to show.
        images: uint8 H×W×3 RGB images of one size.
        rng: randomness for the strategy.
        category: category name passed to the strategy.
        always_anomalous: show an anomaly on every row (a copy with ``normal_probability=0`` is used).
        gap: white pixels between panels.
    """
    if always_anomalous:
        strategy = copy.copy(strategy)
        strategy.normal_probability = 0.0
    rows = []
    for image in images:
        synthetic, mask = strategy(image, rng, category)
        panels = [image, synthetic, overlay(synthetic, mask)]
        h = image.shape[0]
        spacer = np.full((h, gap, 3), 255, np.uint8)
        rows.append(np.concatenate([p for panel in panels for p in (panel, spacer)][:-1], axis=1))
    spacer = np.full((gap, rows[0].shape[1], 3), 255, np.uint8)
    return np.concatenate([p for row in rows for p in (row, spacer)][:-1], axis=0)


def guess_category(folder: Path) -> str:
    """``<root>/<category>/train/good`` → category; otherwise the folder's own name."""
    parts = folder.resolve().parts
    return parts[-3] if len(parts) >= 3 and parts[-1] == "good" and parts[-2] in ("train", "test") else parts[-1]


def write_gallery(cfg: DictConfig) -> Path:
    """Build the strategy of ``cfg.synthesis`` and write the grid to ``cfg.out``."""
    if not cfg.synthesis or not cfg.synthesis.get("_target_"):
        raise SynthesisConfigError("synthesis=none makes no anomalies; pick synthesis=cutpaste|perlin|sdas.")
    folder = Path(cfg.images).expanduser()
    files = list_images(folder) if folder.is_dir() else []
    if not files:
        raise EmptyTextureFolderError(f"images={folder} holds no images; point it at a folder of normal images.")
    rng = np.random.default_rng(int(cfg.seed))
    picks = rng.choice(len(files), size=min(int(cfg.n), len(files)), replace=False)
    images = [load_rgb(str(files[i]), int(cfg.image_size), int(cfg.image_size)).copy() for i in picks]
    strategy = instantiate(cfg.synthesis)
    category = cfg.category or guess_category(folder)
    grid = gallery_grid(strategy, images, rng, category, bool(cfg.always_anomalous))
    out = Path(cfg.out).expanduser()
    ok, encoded = cv2.imencode(out.suffix or ".png", cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))
    if not ok:
        raise SynthesisConfigError(f"out={out} has an image type OpenCV cannot write; use .png or .jpg.")
    with atomic_open(out, "wb") as handle:
        handle.write(encoded.tobytes())
    log.info("Wrote %s (%d rows: image | synthetic | mask) for %s.", out, len(images), strategy)
    return out
