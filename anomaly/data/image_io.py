"""Read images and masks from disk into the framework's array conventions."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from anomaly.data.errors import DataError


def _decode(path: str | Path, kind: str) -> np.ndarray:
    """Decode any OpenCV-readable file unchanged (bit depth, channels), or raise DataError."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{kind} file {path} does not exist; check data.root and the data set layout.")
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as error:
        raise DataError(f"{kind} file {path} cannot be read ({error}); check its permissions.") from error
    if not data.size:
        raise DataError(f"{kind} file {path} is empty; replace or remove the file.")
    if _truncated(data):
        # Some decoders fill the missing rows with grey instead of failing: refuse before decoding.
        raise DataError(
            f"{kind} file {path} is not a readable image: it is truncated (an interrupted copy or "
            "download?); copy it again, or replace or remove the file."
        )
    try:
        array = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    except cv2.error as error:
        raise DataError(
            f"{kind} file {path} cannot be decoded ({error}); replace or remove the file."
        ) from error
    if array is None:
        raise DataError(
            f"{kind} file {path} is not a readable image (corrupt or unsupported format); "
            "replace or remove the file."
        )
    return array


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_END = b"IEND\xaeB`\x82"  # the IEND chunk's type and CRC: the last 8 bytes of every complete PNG
_JPEG_START, _JPEG_END = b"\xff\xd8", b"\xff\xd9"


def _truncated(data: np.ndarray) -> bool:
    """True for a PNG or JPEG whose end marker is missing (bytes cut off); other formats are not checked.

    Bytes after the end marker are ignored by decoders, so the marker is searched for, not expected last.
    """
    head = data[:8].tobytes()
    if head.startswith(_PNG_SIGNATURE):
        return not _contains(data, _PNG_END)
    if head.startswith(_JPEG_START):
        return not _contains(data[2:], _JPEG_END)
    return False


def _contains(data: np.ndarray, marker: bytes) -> bool:
    """Whether ``marker`` occurs in ``data``, looking at the last 4 KiB first (where it usually is)."""
    return marker in data[-4096:].tobytes() or marker in data.tobytes()


def _to_uint8(array: np.ndarray) -> np.ndarray:
    """Scale 16-bit or float pixel values to uint8."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.uint16:
        return np.round(array.astype(np.float32) / 257.0).astype(np.uint8)
    values = array.astype(np.float32)
    if np.issubdtype(array.dtype, np.floating) and values.size and float(np.nanmax(values)) <= 1.0:
        values = values * 255.0
    return np.clip(np.nan_to_num(values), 0, 255).round().astype(np.uint8)


def read_image(path: str | Path) -> np.ndarray:
    """Read an image as uint8 H×W×3 RGB.

    Grayscale is replicated to three channels, alpha is dropped, 16-bit and float images are scaled
    to 8 bits.

    Raises:
        DataError: the file is missing, corrupt or not an image.
    """
    array = _to_uint8(_decode(path, "Image"))
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim == 2:
        return np.ascontiguousarray(np.repeat(array[:, :, None], 3, axis=2))
    if array.ndim == 3 and array.shape[2] == 3:
        return np.ascontiguousarray(array[:, :, ::-1])
    if array.ndim == 3 and array.shape[2] == 4:
        return np.ascontiguousarray(array[:, :, 2::-1])
    raise DataError(f"Image file {path} has shape {array.shape}, not an image; replace or remove the file.")


def read_mask(path: str | Path, size: tuple[int, int], image: str | Path | None = None) -> np.ndarray:
    """Read a ground-truth mask as uint8 H×W in {0, 1} (any non-zero pixel is anomalous).

    Args:
        path: mask file.
        size: (height, width) of the image the mask belongs to.
        image: that image's path, only used to name it in error messages.

    Raises:
        DataError: the file is unreadable, or its size differs from ``size``.
    """
    array = _decode(path, "Mask")
    if array.ndim == 3:
        array = array[:, :, : min(3, array.shape[2])].max(axis=2)
    height, width = int(size[0]), int(size[1])
    if array.shape[:2] != (height, width):
        of_image = f"its image {image}" if image is not None else "its image"
        raise DataError(
            f"Mask {path} is {array.shape[1]}×{array.shape[0]} (w×h) but {of_image} is {width}×{height}; "
            "give each mask its image's size (or fix the image/mask pairing)."
        )
    return (array > 0).astype(np.uint8)
