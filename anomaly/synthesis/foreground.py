"""Foreground masks (Otsu/triangle threshold + morphology) so synthetic anomalies fall on the object."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import cv2
import numpy as np
from scipy import ndimage

from anomaly.synthesis.base import SynthesisConfigError

METHODS = {"otsu": cv2.THRESH_OTSU, "triangle": cv2.THRESH_TRIANGLE}
POLARITIES = ("auto", "bright", "dark")
KERNELS = ("odd", "exact")


class Foreground:
    """Object mask of an image: threshold (Otsu or triangle) on the grey image, then closing and opening.

    RealNet/DRAEM segment each MVTec object category with a hand-picked threshold and polarity; here the
    polarity defaults to ``auto``: the background is whichever class covers most of the image border.
    RealNet's own per-category rule for MVTec AD is ``conf/synthesis/foreground/realnet_mvtec.yaml``.

    Args:
        method: ``otsu`` or ``triangle``.
        polarity: ``auto``, ``bright`` (object brighter than background) or ``dark``.
        close_frac: closing kernel side as a fraction of the short image side (6/256 in RealNet).
        open_frac: opening kernel side as a fraction of the short image side.
        kernel: ``odd`` (ours: the side rounded to an odd number, OpenCV's closing/opening) or ``exact``
            (the side as computed, even ones too, shift-free as skimage's ``square(n)`` in RealNet's code:
            ``scipy.ndimage`` grey closing/opening).
        texture_categories: categories that are textures: their foreground is the whole image.
        per_category: per-category overrides of ``method``/``polarity``/``close_frac``/``open_frac``.
        min_fraction: below this foreground fraction the segmentation is deemed failed and the whole
            image is used, so an anomaly can still be placed.
    """

    def __init__(self, method: str = "otsu", polarity: str = "auto", close_frac: float = 0.025,
                 open_frac: float = 0.025, texture_categories: Sequence[str] = (),
                 per_category: Mapping[str, Mapping[str, Any]] | None = None,
                 min_fraction: float = 0.02, kernel: str = "odd") -> None:
        if kernel not in KERNELS:
            raise SynthesisConfigError(f"synthesis.foreground.kernel={kernel!r} is unknown; use one of {list(KERNELS)}.")
        self.method, self.polarity, self.kernel = method, polarity, kernel
        self.close_frac, self.open_frac = float(close_frac), float(open_frac)
        self.texture_categories = set(texture_categories)
        self.per_category = {k: dict(v) for k, v in (per_category or {}).items()}
        self.min_fraction = float(min_fraction)
        checks = {"": {"method": method, "polarity": polarity}}
        checks.update({f"per_category.{k}.": v for k, v in self.per_category.items()})
        for name, opts in checks.items():
            if opts.get("method", "otsu") not in METHODS:
                raise SynthesisConfigError(f"synthesis.foreground.{name}method={opts['method']!r} is unknown; "
                                           f"use one of {list(METHODS)}.")
            if opts.get("polarity", "auto") not in POLARITIES:
                raise SynthesisConfigError(f"synthesis.foreground.{name}polarity={opts['polarity']!r} is unknown; "
                                           f"use one of {list(POLARITIES)}.")

    def __call__(self, image: np.ndarray, category: str | None = None) -> np.ndarray:
        """Boolean H×W foreground of a uint8 RGB image."""
        h, w = image.shape[:2]
        if category in self.texture_categories:
            return np.ones((h, w), bool)
        opts = {"method": self.method, "polarity": self.polarity, "close_frac": self.close_frac,
                "open_frac": self.open_frac, **self.per_category.get(category or "", {})}
        grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        _, binary = cv2.threshold(grey, 0, 1, cv2.THRESH_BINARY | METHODS[opts["method"]])
        fg = binary.astype(bool)
        polarity = opts["polarity"]
        if polarity == "auto":
            border = np.concatenate([fg[0], fg[-1], fg[:, 0], fg[:, -1]])
            polarity = "dark" if border.mean() > 0.5 else "bright"
        if polarity == "dark":
            fg = ~fg
        mask = self.morphology(fg.astype(np.uint8), opts["close_frac"], opts["open_frac"], min(h, w)).astype(bool)
        if mask.mean() < self.min_fraction:
            return np.ones((h, w), bool)
        return mask

    def morphology(self, mask: np.ndarray, close_frac: float, open_frac: float, side: int) -> np.ndarray:
        """Closing, then opening, of a 0/1 uint8 mask with square kernels of ``frac · side`` pixels."""
        for closing, frac in ((True, close_frac), (False, open_frac)):
            k = int(round(frac * side))
            if self.kernel == "exact":
                if k >= 2:
                    mask = (ndimage.grey_closing if closing else ndimage.grey_opening)(mask, size=(k, k))
                continue
            k += 1 - k % 2  # odd kernels: OpenCV's even ones shift the mask by a pixel
            if k >= 3:
                mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE if closing else cv2.MORPH_OPEN, np.ones((k, k), np.uint8))
        return mask

    def __repr__(self) -> str:
        return (f"Foreground(method={self.method!r}, polarity={self.polarity!r}, kernel={self.kernel!r}, "
                f"texture_categories={sorted(self.texture_categories)})")
