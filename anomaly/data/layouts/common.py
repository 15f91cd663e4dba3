"""Helpers shared by the layout readers: root and category checks, image listing, seeded splits."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from anomaly.data.errors import DataError

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})
SPLITS = ("train", "test")


def check_root(root: str | Path, holding: str) -> Path:
    """Return ``root`` as a Path after checking it is an existing, non-empty folder.

    Args:
        root: the data set folder (``data.root``).
        holding: what the folder should hold, for the message (e.g. ``"<category>/train/good/*.png"``).
    """
    path = Path(root).expanduser()
    if not path.exists():
        raise DataError(f"data.root={path} does not exist; set data.root to the folder holding {holding}.")
    if not path.is_dir():
        raise DataError(
            f"data.root={path} is a file, not a folder; set data.root to the folder holding {holding}."
        )
    if not any(not entry.name.startswith(".") for entry in path.iterdir()):
        raise DataError(
            f"data.root={path} is empty; put the data set there or set data.root to the folder holding {holding}."
        )
    return path


def check_split(split: str) -> None:
    """Raise DataError unless ``split`` is ``train`` or ``test``."""
    if split not in SPLITS:
        raise DataError(f"split={split!r} is not valid; use 'train' or 'test'.")


def check_category(category: str, available: Sequence[str], root: Path) -> None:
    """Raise DataError (listing what exists) unless ``category`` is one of ``available``."""
    if category not in available:
        listed = ", ".join(available) if available else "none"
        raise DataError(f"data.category={category} does not exist in {root}; available: {listed}.")


def subfolders(folder: Path) -> list[Path]:
    """Visible sub-folders of ``folder``, sorted by name."""
    return sorted(
        (p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name
    )


def is_image(path: Path) -> bool:
    """Whether ``path`` is a visible file with an image extension (case-insensitive)."""
    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS


def list_images(folder: Path, suffixes: Iterable[str] | None = None) -> list[Path]:
    """Image files directly in ``folder`` sorted by name (optionally only the given extensions)."""
    if not folder.is_dir():
        return []
    allowed = {s.lower() for s in suffixes} if suffixes is not None else IMAGE_EXTENSIONS
    return sorted(
        (p for p in folder.iterdir() if is_image(p) and p.suffix.lower() in allowed), key=lambda p: p.name
    )


def require_images(folder: Path, expected: str) -> list[Path]:
    """Images in ``folder``; DataError naming the folder when it is missing or holds none."""
    if not folder.is_dir():
        raise DataError(f"{folder} does not exist; the layout expects {expected}.")
    images = list_images(folder)
    if not images:
        raise DataError(f"{folder} holds no images (.png/.jpg/.bmp/.tif); the layout expects {expected}.")
    return images


def find_mask(folder: Path, stem: str, suffixes: Sequence[str] = ("",)) -> Path | None:
    """The mask image in ``folder`` named ``<stem><suffix>.<any image extension>``, if any."""
    for suffix in suffixes:
        for ext in (".png", ".PNG", ".bmp", ".jpg", ".tif", ".tiff", ".jpeg", ".JPG", ".BMP"):
            candidate = folder / f"{stem}{suffix}{ext}"
            if candidate.is_file():
                return candidate
    return None


def missing_mask(image: Path, expected: Path) -> DataError:
    """The error for an anomalous test image without its ground-truth mask."""
    return DataError(
        f"Test image {image} has no mask (expected {expected}); add the mask or remove the image."
    )


def seeded_split(items: Sequence[str], first_ratio: float, seed: int) -> tuple[list[str], list[str]]:
    """Split names into (first, rest) by a seeded permutation of their sorted order.

    The result depends only on the set of names, the ratio and the seed, not on listing order.
    Both parts get at least one item when there are two or more.
    """
    names = sorted(items)
    n_first = int(round(first_ratio * len(names)))
    if len(names) >= 2:
        n_first = min(max(n_first, 1), len(names) - 1)
    order = np.random.default_rng(seed).permutation(len(names))
    first = sorted(names[i] for i in order[:n_first])
    rest = sorted(names[i] for i in order[n_first:])
    return first, rest


def check_ratio(name: str, value: float) -> None:
    """Raise DataError unless 0 < value < 1."""
    if not 0.0 < float(value) < 1.0:
        raise DataError(
            f"{name}={value} is not a fraction; set {name} to a value between 0 and 1 (exclusive)."
        )
