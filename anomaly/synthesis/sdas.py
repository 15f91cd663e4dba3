"""RealNet's SDAS anomalies at training time: bank samples pasted through Perlin × foreground masks.

The bank is built beforehand by ``python -m anomaly.synthesize`` from a class-conditional DDPM
(:mod:`anomaly.models.ddpm`), or on first use when ``fill.ckpt_path`` names the DDPM (missing or short
categories are sampled then, resumably, as ``anomaly.synthesize`` does); here each anomalous image gets
``I' = (1-M)·I + M·(β·A + (1-β)·I)`` with ``A`` a bank image of the same category and ``β ~ U[0.5, 1.0]``.
"""

from __future__ import annotations

import fcntl
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from omegaconf import DictConfig, OmegaConf

from anomaly.synthesis.bank import Bank, BankError
from anomaly.synthesis.foreground import Foreground
from anomaly.synthesis.perlin import PerlinSynthesis
from anomaly.synthesis.textures import load_rgb


class BankTextures:
    """Texture source drawing a random bank image of the sample's own category.

    Args:
        bank: the bank folder.
        resize: resize bank images to the training image size instead of raising when they differ.
        fill: ``ckpt_path`` of a class-conditional DDPM (``null``: the bank must exist), ``n_per_class``
            and the other ``anomaly.synthesize`` options: categories with fewer finished images are
            sampled on first use (:meth:`prepare`).
    """

    def __init__(self, bank: str | Path, resize: bool = False, fill: Mapping[str, Any] | None = None) -> None:
        self.root = Path(bank).expanduser()
        if isinstance(fill, DictConfig):
            fill = OmegaConf.to_container(fill, resolve=True)  # type: ignore[assignment]
        self.fill = dict(fill) if fill and fill.get("ckpt_path") else None
        if self.fill is not None and not Path(str(self.fill["ckpt_path"])).expanduser().is_file():
            raise BankError(f"synthesis.fill.ckpt_path={self.fill['ckpt_path']} is not a file; give the DDPM "
                            "checkpoint of python -m anomaly.train experiment=ddpm_cpu (its checkpoints/last.ckpt) "
                            "or set synthesis.fill.ckpt_path=null to use an existing bank.")
        self._bank = None if self.fill is not None else Bank.open(self.root, option="synthesis.bank")
        self.resize = bool(resize)
        self._files: dict[str, list[str]] = {}

    @property
    def bank(self) -> Bank:
        """The bank (opened on first use when it is filled on first use)."""
        if self._bank is None:
            self._bank = Bank.open(self.root, option="synthesis.bank")
        return self._bank

    def _short(self, categories: Sequence[str]) -> list[str]:
        if self.fill is None:
            return []
        if not (self.root / "bank.json").is_file():
            return list(categories)
        bank = Bank.open(self.root, option="synthesis.bank")
        return [c for c in categories if len(bank.done(c)) < int(self.fill.get("n_per_class", 256))]

    def prepare(self, categories: Sequence[str]) -> None:
        """Sample the missing images of ``categories`` from ``fill.ckpt_path`` (progress bar, resumable; one
        process at a time under a lock in the bank folder). Nothing to do without ``fill`` or when full."""
        short = self._short(categories)
        if not short:
            return
        from anomaly.synthesis.fill import fill_bank  # the DDPM stack, imported only when sampling

        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".fill.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                cfg = OmegaConf.create({"n_per_class": 256, "batch_size": 16, "seed": 0, "use_ema": True,
                                        "device": "auto", "progress": True,
                                        "sampler": {"method": "ancestral", "num_steps": 20, "s": [0.1, 0.2]},
                                        **self.fill, "bank_dir": str(self.root), "categories": None})
                fill_bank(cfg, only=self._short(short))
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
        self._bank, self._files = None, {}

    def files(self, category: str) -> list[str]:
        """Finished bank files of ``category`` (cached); raises :class:`BankError` if there are none."""
        if category not in self._files:
            self.prepare([category])
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
        return f"BankTextures(bank={str(self.root)!r})"


class SDASSynthesis(PerlinSynthesis):
    """SDAS pasting (RealNet): Perlin × foreground region filled with a same-category bank sample.

    Args:
        bank: folder written by ``python -m anomaly.synthesize``.
        foreground: object mask (:class:`Foreground`); ``None`` uses the whole image.
        beta: opacity range of the bank sample (RealNet: [0.5, 1.0]).
        resize: resize bank images when their size differs from the training images.
        fill: fill the bank on first use from a DDPM checkpoint (:class:`BankTextures`).
        scales, threshold, rotation, normal_probability, max_attempts: as :class:`PerlinSynthesis`.
    """

    def __init__(self, bank: str | Path, foreground: Foreground | None = None,
                 beta: Sequence[float] = (0.5, 1.0), resize: bool = False, scales: Sequence[int] = (0, 5),
                 threshold: float = 0.5, rotation: float = 90.0, normal_probability: float = 0.5,
                 max_attempts: int = 8, fill: Mapping[str, Any] | None = None) -> None:
        self.bank_textures = BankTextures(bank, resize=resize, fill=fill)
        super().__init__(texture=self.bank_textures, foreground=foreground, beta=beta, scales=scales,
                         threshold=threshold, rotation=rotation, normal_probability=normal_probability,
                         max_attempts=max_attempts)

    def prepare(self, categories: Sequence[str]) -> None:
        """Fill the bank for ``categories`` now if it is filled on first use and missing or short."""
        self.bank_textures.prepare(categories)

    def validate(self, categories: Sequence[str], image_size: Sequence[int]) -> None:
        """Check up front that the bank serves these categories at this (H, W) size."""
        source = self.bank_textures
        source.prepare(categories)
        source.bank.validate(categories, None if source.resize else image_size, option="synthesis.bank")
        for c in categories:
            source.files(c)
