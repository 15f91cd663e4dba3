"""Render samples and write the synthetic data set in the MVTec AD layout, deterministically by seed."""

from __future__ import annotations

import os
import zlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from anomaly.data.errors import DataError
from anomaly.data.synthetic.camera import Camera
from anomaly.data.synthetic.catalog import CATALOG, Category

GENERATOR_VERSION = 7  # bump when the output for given parameters changes (invalidates caches)
MIN_CHANGE = 5  # grey levels: a defect pixel changes at least this much in some channel (before closing)
PNG = [  # fast, deterministic PNG settings (noisy images barely compress anyway)
    cv2.IMWRITE_PNG_COMPRESSION, 1,
    cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_HUFFMAN_ONLY,
    cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_AVG,
]  # fmt: skip


@dataclass(frozen=True)
class Sample:
    """One rendered sample.

    Attributes:
        image: uint8 H×W×3 RGB image.
        mask: uint8 H×W in {0, 1}; exactly the pixels where ``image`` differs from ``base``.
        base: the same shot without the defect (equal to ``image`` for good samples).
    """

    image: np.ndarray
    mask: np.ndarray
    base: np.ndarray


def categories() -> list[str]:
    """Names of the synthetic categories."""
    return sorted(CATALOG)


def defect_types(category: str) -> list[str]:
    """Defect folder names of a category."""
    return sorted(_spec(category).defects)


def _spec(category: str) -> Category:
    if category not in CATALOG:
        raise DataError(
            f"data.category={category} is not a synthetic category; available: {', '.join(categories())}."
        )
    return CATALOG[category]


def category_names(chosen: str | Sequence[str] | None) -> list[str]:
    """The categories to generate: all (``None``), a comma-separated string, or a list; checked, sorted."""
    if chosen is None:
        return categories()
    names = [c.strip() for c in chosen.split(",")] if isinstance(chosen, str) else [str(c) for c in chosen]
    for name in names:
        _spec(name)
    return sorted(set(names))


def _rng(seed: int, category: str, folder: str, index: int, stream: int) -> np.random.Generator:
    """Independent stream per sample: a sample does not depend on which others are generated."""
    key = [int(seed), zlib.crc32(category.encode()), zlib.crc32(folder.encode()), int(index), int(stream)]
    return np.random.default_rng(key)


def _changed(base: np.ndarray, shot: np.ndarray, scale: float) -> np.ndarray:
    """Boolean mask of the visible change: ≥ MIN_CHANGE levels, gaps closed, specks dropped."""
    diff = np.abs(shot.astype(np.int16) - base.astype(np.int16)).max(axis=2)
    core = (diff >= MIN_CHANGE).astype(np.uint8)
    core = cv2.morphologyEx(core, cv2.MORPH_CLOSE, np.ones((3, 3), np.uint8))
    mask = (core > 0) & (diff > 0)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if count > 1:
        small = stats[:, cv2.CC_STAT_AREA] < max(3, round(4 * scale * scale))
        small[0] = False
        mask &= ~small[labels]
    return mask


def render_sample(category: str, folder: str, index: int, seed: int = 0, image_size: int = 256) -> Sample:
    """Render sample ``index`` of ``folder`` (``train/good``, ``test/good`` or ``test/<defect>``).

    A defective sample is its normal scene with the defect drawn in, shot by the same camera
    (same light and noise); the mask is the set of pixels that changed, and every other pixel is
    copied from the normal shot, so ``mask == (image != base).any(-1)`` holds exactly.
    """
    spec = _spec(category)
    defect = folder.split("/")[-1]
    if defect != "good" and defect not in spec.defects:
        raise DataError(f"{category} has no defect {defect}; it has: {', '.join(defect_types(category))}.")
    rng = _rng(seed, category, folder, index, 0)
    scene = spec.render(rng, image_size)
    camera = Camera.draw(rng, image_size)
    base = camera.shoot(scene.compose())
    if defect == "good":
        return Sample(base, np.zeros(base.shape[:2], np.uint8), base)
    scale = image_size / 256.0
    min_area = max(8, round(30 * scale * scale))
    for attempt in range(1, 50):
        shot = camera.shoot(
            spec.defects[defect](scene.copy(), _rng(seed, category, folder, index, attempt)).compose()
        )
        mask = _changed(base, shot, scale)
        if mask.sum() >= min_area:
            image = np.where(mask[..., None], shot, base)
            return Sample(image, mask.astype(np.uint8), base)
    raise RuntimeError(f"could not draw a visible {defect} on {category} sample {index} at size {image_size}")


def _write(path: Path, array: np.ndarray) -> None:
    """Encode ``array`` (RGB or gray) as PNG with fixed settings and write it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = array[:, :, ::-1] if array.ndim == 3 else array
    ok, encoded = cv2.imencode(".png", np.ascontiguousarray(data), PNG)
    if not ok:
        raise OSError(f"could not encode {path}")
    path.write_bytes(encoded.tobytes())


def generate(
    root: Path,
    categories: str | Sequence[str] | None = None,
    seed: int = 0,
    image_size: int = 256,
    n_train: int = 60,
    n_test_good: int = 20,
    n_test_defect_per_type: int = 8,
    workers: int | None = None,
) -> Path:
    """Write the synthetic data set under ``root`` in the MVTec AD layout and return ``root``.

    ``<root>/<category>/train/good/000.png``, ``test/good/000.png``, ``test/<defect>/000.png`` and
    ``ground_truth/<defect>/000_mask.png`` (0/255). The bytes depend only on the arguments other
    than ``workers`` (threads; default: up to 4). Prefer
    :func:`anomaly.data.synthetic.ensure_synthetic`, which caches and writes atomically.
    """
    root = Path(root)
    names = category_names(categories)
    if image_size < 32:
        raise DataError(f"image_size={image_size} is too small; use at least 32.")
    jobs: list[tuple[str, str, int]] = []
    for name in names:
        folders = [("train/good", n_train), ("test/good", n_test_good)]
        folders += [(f"test/{d}", n_test_defect_per_type) for d in defect_types(name)]
        jobs += [(name, folder, index) for folder, count in folders for index in range(count)]

    def run(job: tuple[str, str, int]) -> None:
        name, folder, index = job
        sample = render_sample(name, folder, index, seed, image_size)
        _write(root / name / folder / f"{index:03d}.png", sample.image)
        defect = folder.split("/")[-1]
        if defect != "good":
            _write(
                root / name / "ground_truth" / defect / f"{index:03d}_mask.png", sample.mask * np.uint8(255)
            )

    threads = workers if workers is not None else min(4, os.cpu_count() or 1)
    if threads <= 1:
        for job in jobs:
            run(job)
    else:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            list(pool.map(run, jobs))
    return root
