"""Albumentations pipelines: geometry (resize, optional centre crop) and normalisation."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import albumentations as A
import cv2
import numpy as np
import torch
from torch import Tensor

from anomaly.data.errors import DataError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def geometry(image_size: int | Sequence[int], crop_size: int | Sequence[int] | None = None) -> A.Compose:
    """Resize (bilinear for images, nearest for masks) then optionally centre-crop.

    Args:
        image_size: side or (height, width) after resizing.
        crop_size: side or (height, width) of the centre crop; ``None`` keeps the resized image.

    Raises:
        DataError: a size is not positive, or the crop is larger than the resized image.
    """
    height, width = _pair(image_size, "data.image_size")
    steps: list[A.BasicTransform] = [
        A.Resize(height, width, interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST)
    ]
    if crop_size is not None:
        crop_h, crop_w = _pair(crop_size, "data.crop_size")
        if crop_h > height or crop_w > width:
            raise DataError(
                f"data.crop_size={_show(crop_size)} is larger than data.image_size={_show(image_size)}; "
                "set data.crop_size no larger than data.image_size (or data.crop_size=null for no crop)."
            )
        steps.append(A.CenterCrop(crop_h, crop_w))
    return A.Compose(steps)


def to_tensor(
    image: np.ndarray, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> Tensor:
    """uint8 H×W×3 RGB → normalised float 3×H×W."""
    # channels first while still uint8 (a quarter of the bytes to move), then in-place float32 ops: the same
    # values as numpy's (x / 255 - mean) / std, 4x faster
    out = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).contiguous().to(torch.float32)
    return out.div_(255.0).sub_(torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)).div_(
        torch.tensor(std, dtype=torch.float32).view(3, 1, 1))


def denormalize(
    image: Tensor, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> Tensor:
    """Normalised float (B×)3×H×W → float in [0, 1] for display."""
    shape = (3, 1, 1)
    out = image * torch.tensor(std, device=image.device).view(shape) + torch.tensor(mean, device=image.device).view(shape)
    return out.clamp(0, 1)


def _pair(size: int | Sequence[int], option: str) -> tuple[int, int]:
    """``size`` as (height, width) of positive ints, or DataError naming ``option``."""
    try:
        if isinstance(size, bool):
            raise TypeError
        height, width = (size, size) if isinstance(size, int) else size
        if isinstance(height, bool) or isinstance(width, bool) or int(height) != height or int(width) != width:
            raise TypeError
        height, width = int(height), int(width)
    except (TypeError, ValueError):
        raise DataError(f"{option}={_show(size)} is not a size; give a side (e.g. 224) or [height, width].") from None
    if height <= 0 or width <= 0:
        raise DataError(f"{option}={_show(size)} is not a positive size; give a side (e.g. 224) or [height, width].")
    return height, width


def _show(size: object) -> str:
    """A size as the user wrote it on the command line (``[h, w]`` for any sequence)."""
    if isinstance(size, (str, bytes)) or not isinstance(size, Iterable):
        return str(size)
    return "[" + ", ".join(str(v) for v in size) + "]"
