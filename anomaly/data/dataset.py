"""A map-style Dataset over layout records: read, resize/crop, synthesise, normalise."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from anomaly.data.errors import DataError
from anomaly.data.image_io import read_image, read_mask
from anomaly.data.record import Record
from anomaly.data.transforms import IMAGENET_MEAN, IMAGENET_STD, geometry, to_tensor

Synthesis = Callable[[np.ndarray, np.random.Generator, str], tuple[np.ndarray, np.ndarray]]


class AnomalyDataset(Dataset):
    """Samples as dicts: ``image``, ``mask``, ``label``, ``category``, ``defect``, ``path``.

    Args:
        records: what to load (from a layout reader).
        image_size: resize target; ``crop_size``: optional centre crop after the resize.
        synthesis: optional strategy ``(image, rng, category) -> (image, mask)`` applied after the
            geometry and before normalisation (training only); its mask becomes ``mask``,
            ``label`` is 1 when the mask has any pixel, and ``source`` holds the image before the
            synthesis (the normal target of methods that learn to repair anomalies).
        seed: with a seed, sample ``i``'s synthesis draws from ``(seed, i)``: the same anomaly every
            epoch (the validation split); without, from torch's generator (new each epoch).
        with_source: include ``source`` under synthesis (training; validation needs none).
    """

    def __init__(
        self,
        records: Sequence[Record],
        image_size: int | Sequence[int],
        crop_size: int | Sequence[int] | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        synthesis: Synthesis | None = None,
        seed: int | None = None,
        with_source: bool = True,
    ) -> None:
        self.records = list(records)
        self.seed, self.with_source = seed, with_source
        self.geometry = geometry(image_size, crop_size)
        self.mean, self.std = tuple(mean), tuple(std)
        self.synthesis = synthesis

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.records[index]
        image = read_image(record.image)
        if record.mask is not None:
            mask = read_mask(record.mask, image.shape[:2], image=record.image)
        else:
            mask = np.zeros(image.shape[:2], np.uint8)
        out = self.geometry(image=image, mask=mask)
        image, mask = out["image"], out["mask"].astype(np.float32)
        label = record.label
        extra: dict[str, Any] = {}
        if self.synthesis is not None:
            if self.with_source:
                extra["source"] = to_tensor(image, self.mean, self.std)
            # Drawn from torch's generator: deterministic under a seed, different per epoch and worker.
            draw = int(torch.randint(0, 2**62, (1,)).item()) if self.seed is None else [self.seed, index]
            rng = np.random.default_rng(draw)
            image, mask = self.synthesis(image, rng, record.category)
            mask = mask.astype(np.float32)
            label = int(mask.any())
        return {
            "image": to_tensor(image, self.mean, self.std),
            "mask": torch.from_numpy(np.ascontiguousarray(mask))[None],
            "label": torch.tensor(label, dtype=torch.long),
            "category": record.category,
            "defect": record.defect,
            "path": str(record.image),
            **extra,
        }


def check_records(records: Sequence[Record]) -> None:
    """Fail early, naming the file, on unreadable images and masks whose size differs from the image.

    Reads only the file headers, so it costs milliseconds per thousand files.
    """
    for record in records:
        image_size = _header_size(record.image)
        if record.mask is None:
            continue
        mask_size = _header_size(record.mask)
        if mask_size != image_size:
            raise DataError(
                f"Mask {record.mask} is {mask_size[0]}×{mask_size[1]} but its image {record.image} is "
                f"{image_size[0]}×{image_size[1]}; give each mask its image's size."
            )


def _header_size(path: Any) -> tuple[int, int]:
    try:
        with Image.open(path) as handle:
            return handle.size
    except FileNotFoundError as error:
        raise DataError(f"{path} does not exist; check data.root and the data set layout.") from error
    except Exception as error:  # noqa: BLE001 - PIL raises many types for bad files
        raise DataError(f"{path} is not a readable image ({error}); replace or remove the file.") from error
