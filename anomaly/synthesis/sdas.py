"""RealNet's SDAS anomalies at training time: bank samples pasted through Perlin × foreground masks.

The bank is built beforehand by ``python -m anomaly.synthesize`` from a class-conditional DDPM
(:mod:`anomaly.models.ddpm`); here each anomalous image gets ``I' = (1-M)·I + M·(β·A + (1-β)·I)``
with ``A`` a bank image of the same category and ``β ~ U[0.5, 1.0]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from anomaly.synthesis.bank import Bank, BankError
from anomaly.synthesis.foreground import Foreground
from anomaly.synthesis.perlin import PerlinSynthesis
from anomaly.synthesis.textures import load_rgb


class BankTextures:
    """Texture source drawing a random bank image of the sample's own category.

    Args:
        bank: the bank folder.
        resize: resize bank images to the training image size instead of raising when they differ.
    """

    def __init__(self, bank: str | Path, resize: bool = False) -> None:
        self.bank = Bank.open(bank, option="synthesis.bank")
        self.resize = bool(resize)
        self._files: dict[str, list[str]] = {}

    def files(self, category: str) -> list[str]:
        """Finished bank files of ``category`` (cached); raises :class:`BankError` if there are none."""
        if category not in self._files:
            self.bank.validate([category], option="synthesis.bank")
            files = [str(p) for p in self.bank.files(category)]
            if not files:
                raise BankError(f"synthesis.bank={self.bank.root} has no finished images of {category!r}; "
                                "run python -m anomaly.synthesize to fill it.")
            self._files[category] = files
        return self._files[category]

    def __call__(self, shape: tuple[int, int], rng: np.random.Generator,
                 category: str | None = None) -> np.ndarray:
        """Return a random bank image of ``category`` as uint8 H×W×3."""
        if category is None:
            raise BankError("The sdas strategy needs the sample's category; call strategy(image, rng, category).")
        if not self.resize:
            try:
                self.bank.validate(image_size=shape, option="synthesis.bank")
            except BankError as err:
                raise BankError(f"{err} (or set synthesis.resize=true to resize bank images)") from None
        files = self.files(category)
        image = load_rgb(files[int(rng.integers(len(files)))], *self.bank.image_size, "Bank image",
                         f"synthesis.bank={self.bank.root}",
                         "delete it and run python -m anomaly.synthesize with the same bank_dir to write it again")
        if image.shape[:2] != tuple(shape):
            image = cv2.resize(image, (int(shape[1]), int(shape[0])), interpolation=cv2.INTER_LINEAR)
        return image

    def __repr__(self) -> str:
        return f"BankTextures(bank={str(self.bank.root)!r})"


class SDASSynthesis(PerlinSynthesis):
    """SDAS pasting (RealNet): Perlin × foreground region filled with a same-category bank sample.

    Args:
        bank: folder written by ``python -m anomaly.synthesize``.
        foreground: object mask (:class:`Foreground`); ``None`` uses the whole image.
        beta: opacity range of the bank sample (RealNet: [0.5, 1.0]).
        resize: resize bank images when their size differs from the training images.
        scales, threshold, rotation, normal_probability, max_attempts: as :class:`PerlinSynthesis`.
    """

    def __init__(self, bank: str | Path, foreground: Foreground | None = None,
                 beta: Sequence[float] = (0.5, 1.0), resize: bool = False, scales: Sequence[int] = (0, 5),
                 threshold: float = 0.5, rotation: float = 90.0, normal_probability: float = 0.5,
                 max_attempts: int = 8) -> None:
        self.bank_textures = BankTextures(bank, resize=resize)
        super().__init__(texture=self.bank_textures, foreground=foreground, beta=beta, scales=scales,
                         threshold=threshold, rotation=rotation, normal_probability=normal_probability,
                         max_attempts=max_attempts)

    def validate(self, categories: Sequence[str], image_size: Sequence[int]) -> None:
        """Check up front that the bank serves these categories at this (H, W) size."""
        source = self.bank_textures
        source.bank.validate(categories, None if source.resize else image_size, option="synthesis.bank")
        for c in categories:
            source.files(c)
