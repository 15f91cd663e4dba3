"""Texture sources: what fills a Perlin anomaly region.

A texture source is a callable ``source(shape, rng, category) -> uint8 H×W×3``. Three are offered:

- :class:`ProceduralTextures` (offline default): textures generated from ``rng`` (fractal noise,
  stripes, checkers, blobs, grain) with random colours; no files needed.
- :class:`FolderTextures`: any folder of images, e.g. DTD's ``images/`` where the user has it.
- :class:`OtherCategoryTextures`: normal images of the *other* categories of the data set.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from anomaly.synthesis.base import SynthesisConfigError
from anomaly.synthesis.perlin_noise import fractal_noise, perlin_noise, rotate

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


class TextureSource(Protocol):
    """Anything that returns a uint8 H×W×3 texture for a shape, an rng and a category."""

    def __call__(self, shape: tuple[int, int], rng: np.random.Generator,
                 category: str | None = None) -> np.ndarray: ...


class EmptyTextureFolderError(SynthesisConfigError):
    """A texture folder holds no readable image."""


class TextureFileError(SynthesisConfigError):
    """An image file a strategy reads (a texture, a bank image) cannot be read."""


def list_images(root: Path) -> list[Path]:
    """All image files below ``root`` (recursive), sorted for determinism."""
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


@lru_cache(maxsize=256)
def load_rgb(path: str | Path, height: int, width: int, kind: str = "Image", found_by: str | None = None,
             fix: str = "replace or delete the file") -> np.ndarray:
    """Read an image as uint8 RGB resized to ``height``×``width`` (cached).

    Raises:
        TextureFileError: the file is gone, empty, corrupt or not an image. The message reads
            ``"<kind> file <path> (found by <found_by>) is ...; <fix>."``.
    """
    try:
        data = np.fromfile(path, dtype=np.uint8)
        bgr = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    except (OSError, cv2.error):
        bgr = None
    if bgr is None:
        found = f" (found by {found_by})" if found_by else ""
        raise TextureFileError(f"{kind} file {path}{found} is missing, corrupt or not an image; {fix}.")
    if bgr.shape[:2] != (height, width):
        bgr = cv2.resize(bgr, (width, height), interpolation=cv2.INTER_AREA)
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    rgb.setflags(write=False)
    return rgb


def _colours(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, 256, size=(n, 3)).astype(np.float32)


def _ramp(t: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """Map t in [0, 1] through a piecewise-linear colour ramp."""
    pos = t * (len(colours) - 1)
    i = np.clip(pos.astype(np.int64), 0, len(colours) - 2)
    f = (pos - i)[..., None]
    return colours[i] * (1 - f) + colours[i + 1] * f


class ProceduralTextures:
    """Random textures generated on the fly from ``rng``; the offline default texture source.

    Args:
        kinds: which generators to draw from (uniformly): ``fractal``, ``stripes``, ``checker``,
            ``blobs``, ``grain``.
    """

    KINDS = ("fractal", "stripes", "checker", "blobs", "grain")

    def __init__(self, kinds: Sequence[str] = KINDS) -> None:
        unknown = sorted(set(kinds) - set(self.KINDS))
        if unknown or not kinds:
            raise SynthesisConfigError(f"synthesis.texture.kinds={list(kinds)} has unknown or no kinds; "
                                       f"choose from {list(self.KINDS)}.")
        self.kinds = tuple(kinds)

    def __call__(self, shape: tuple[int, int], rng: np.random.Generator,
                 category: str | None = None) -> np.ndarray:
        """Generate one uint8 H×W×3 texture."""
        h, w = int(shape[0]), int(shape[1])
        kind = self.kinds[int(rng.integers(len(self.kinds)))]
        if kind == "fractal":
            t = fractal_noise((h, w), rng, base_res=int(rng.integers(1, 5)), octaves=4)
            img = _ramp(t, _colours(rng, 3))
        elif kind == "stripes":
            yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
            theta = rng.uniform(0, np.pi)
            period = rng.uniform(3, max(4.0, min(h, w) / 3))
            wave = 0.5 + 0.5 * np.sin(2 * np.pi * (xx * np.cos(theta) + yy * np.sin(theta)) / period)
            img = _ramp(wave, _colours(rng, 2))
        elif kind == "checker":
            cell = max(2, int(rng.integers(2, max(3, min(h, w) // 4))))
            yy, xx = np.mgrid[0:h, 0:w]
            board = (((yy // cell) + (xx // cell)) % 2).astype(np.float32)
            board = rotate(board, rng.uniform(-45, 45)) if h > 1 and w > 1 else board
            img = _ramp(board, _colours(rng, 2))
        elif kind == "blobs":
            res = int(2 ** rng.integers(1, 5))
            field = perlin_noise((h, w), (res, res), rng) > rng.uniform(-0.2, 0.2)
            c = _colours(rng, 2)
            img = np.where(field[..., None], c[0], c[1])
        else:  # grain
            noise = rng.normal(0.0, 1.0, size=(h, w)).astype(np.float32)
            sigma = float(rng.uniform(0.5, 3.0))
            noise = cv2.GaussianBlur(noise, (0, 0), sigma)
            noise = (noise - noise.min()) / max(float(np.ptp(noise)), 1e-6)
            img = _ramp(noise, _colours(rng, 2))
        img = img + rng.normal(0.0, rng.uniform(0, 12), size=(h, w, 1))
        return np.clip(np.rint(img), 0, 255).astype(np.uint8)

    def __repr__(self) -> str:
        return f"ProceduralTextures(kinds={list(self.kinds)})"


class FolderTextures:
    """Textures read from a folder of images (searched recursively), resized to the image size.

    Args:
        root: the folder, e.g. ``/data/dtd/images`` (DTD's layout ``images/<class>/*.jpg`` works as is).
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise EmptyTextureFolderError(f"synthesis.texture.root={self.root} is not a folder; point it at a "
                                          "folder of images (e.g. DTD's images/) or use the procedural textures.")
        self.files = list_images(self.root)
        if not self.files:
            raise EmptyTextureFolderError(f"synthesis.texture.root={self.root} contains no images "
                                          f"({', '.join(IMAGE_EXTENSIONS)}); fill it or use the procedural textures.")

    def __call__(self, shape: tuple[int, int], rng: np.random.Generator,
                 category: str | None = None) -> np.ndarray:
        """Return a random image of the folder as uint8 H×W×3."""
        path = self.files[int(rng.integers(len(self.files)))]
        return load_rgb(str(path), int(shape[0]), int(shape[1]), "Texture", f"synthesis.texture.root={self.root}",
                        "replace or delete the file, or point synthesis.texture.root at another folder")

    def __repr__(self) -> str:
        return f"FolderTextures(root={str(self.root)!r}, n={len(self.files)})"


class OtherCategoryTextures:
    """Textures taken from normal images of the categories other than the sample's own.

    Args:
        root: data set root holding one folder per category (MVTec layout).
        pattern: sub-folder of a category holding its normal images; ``{category}`` is replaced.
    """

    def __init__(self, root: str | Path, pattern: str = "{category}/train/good") -> None:
        self.root = Path(root).expanduser()
        self.pattern = pattern
        cats = sorted(p.name for p in self.root.iterdir() if p.is_dir()) if self.root.is_dir() else []
        self.files = {c: list_images(self.root / pattern.format(category=c)) for c in cats}
        self.files = {c: f for c, f in self.files.items() if f}
        if len(self.files) < 2:
            raise EmptyTextureFolderError(
                f"synthesis.texture.root={self.root} has {len(self.files)} categories with images under "
                f"'{pattern}'; other-category textures need at least 2: check root/pattern or use procedural textures.")

    def __call__(self, shape: tuple[int, int], rng: np.random.Generator,
                 category: str | None = None) -> np.ndarray:
        """Return a normal image of a random other category as uint8 H×W×3."""
        others = [c for c in self.files if c != category]
        files = self.files[others[int(rng.integers(len(others)))]]
        path = files[int(rng.integers(len(files)))]
        return load_rgb(str(path), int(shape[0]), int(shape[1]), "Texture",
                        f"synthesis.texture.root={self.root} with pattern '{self.pattern}'",
                        "replace or delete the file")

    def __repr__(self) -> str:
        return f"OtherCategoryTextures(root={str(self.root)!r}, categories={list(self.files)})"
