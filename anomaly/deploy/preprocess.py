"""The exact test-time transform of a checkpoint's run: read, resize (and crop), normalise."""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from anomaly.data.errors import DataError
from anomaly.data.image_io import _to_uint8, read_image
from anomaly.data.transforms import IMAGENET_MEAN, IMAGENET_STD, geometry, to_tensor


@dataclass(frozen=True)
class Preprocess:
    """``data.image_size``/``crop_size``/``mean``/``std`` of the run; the same functions as its data set.

    Calling it on a path (any format :func:`anomaly.data.image_io.read_image` reads) or a uint8
    H×W×3 RGB array returns the normalised float32 3×h×w array the model was tested on.
    """

    image_size: int | tuple[int, int]
    crop_size: int | tuple[int, int] | None
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    @classmethod
    def from_data_config(cls, data: Mapping[str, Any]) -> Preprocess:
        """From a run's ``data`` node (as stored in its checkpoints)."""
        def size(value: Any) -> Any:
            return tuple(value) if isinstance(value, Sequence) and not isinstance(value, str) else value

        return cls(size(data.get("image_size", 256)), size(data.get("crop_size")),
                   tuple(data.get("mean", IMAGENET_MEAN)), tuple(data.get("std", IMAGENET_STD)))

    def __post_init__(self) -> None:
        object.__setattr__(self, "_geometry", geometry(self.image_size, self.crop_size))

    def rgb(self, image: np.ndarray | str | Path) -> np.ndarray:
        """The uint8 RGB image after the run's geometry (what the model sees, before normalisation).

        An image is resized to ``image_size``; one upscaled more than twice on a side gets one warning line
        on stderr naming the first file of each such size (``warn_upscaled``).
        """
        array = read_image(image) if isinstance(image, str | Path) else _as_rgb(image)
        warn_upscaled(image if isinstance(image, str | Path) else "an image array", array.shape[:2], self.image_size)
        return self._geometry(image=array)["image"]

    def input_shape(self) -> tuple[int, int]:
        """(height, width) of what the model sees: ``image_size`` after the optional crop."""
        height, width = (self.image_size, self.image_size) if isinstance(self.image_size, int) else self.image_size
        return self._geometry(image=np.zeros((height, width, 3), np.uint8))["image"].shape[:2]

    def normalise(self, rgb: np.ndarray) -> np.ndarray:
        """A geometry-transformed uint8 RGB image as the normalised float32 3×h×w model input."""
        return to_tensor(rgb, self.mean, self.std).numpy()

    def __call__(self, image: np.ndarray | str | Path) -> np.ndarray:
        return self.normalise(self.rgb(image))

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON beside exported models)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


_WARNED: set[tuple[tuple[int, int], tuple[int, int]]] = set()


def warn_upscaled(name: str | Path, shape: tuple[int, ...], image_size: int | tuple[int, int]) -> None:
    """One line on stderr when a side of an image is under half the model's input size (upscaled more than
    twice, its score is less reliable), once per (image size, input size): a folder of such images gives one
    line. Milder upscaling is a preset's choice (``cdflow_cpu`` reads the 256 px synthetic set at 384 px)."""
    height, width = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    got = (int(shape[0]), int(shape[1]))
    if (2 * got[0] >= height and 2 * got[1] >= width) or (got, (height, width)) in _WARNED:
        return
    _WARNED.add((got, (height, width)))
    print(f"warning: {name} is {got[1]}×{got[0]} px, under half the model's input {width}×{height}: it is "
          f"upscaled and its score is less reliable (other {got[1]}×{got[0]} images are not named).", file=sys.stderr)


def _as_rgb(image: np.ndarray) -> np.ndarray:
    """A caller's array as uint8 H×W×3 RGB (grayscale replicated, alpha dropped)."""
    array = _to_uint8(np.asarray(image))
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise DataError(f"an image array of shape {array.shape} is not H×W, H×W×3 or H×W×4; pass an RGB image.")
    return np.ascontiguousarray(array[:, :, :3])
