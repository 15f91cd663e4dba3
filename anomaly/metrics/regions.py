"""Ground-truth regions for AUPRO: connected components of each image's mask (scipy.ndimage).

Connectivity is 8 (pixels touching at a corner belong to the same region), as in the MVTec AD
evaluation code, which labels each mask with ``scipy.ndimage.label(mask, np.ones((3, 3)))``; a
whole batch is labelled in one call with a 3×3×3 structure whose only non-zero plane is the middle
one, so regions never cross from one image into the next.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor

from anomaly.metrics.checks import MetricInputError

_STRUCTURE = np.zeros((3, 3, 3), dtype=bool)
_STRUCTURE[1] = True
#: Region sizes are stored as float32 payloads, exact up to 2**24 pixels.
MAX_REGION = 1 << 24


def region_sizes(mask: Tensor) -> tuple[Tensor, int, int]:
    """Label the regions of a batch of masks.

    Args:
        mask: bool B×H×W (any device).

    Returns:
        float32 B×H×W on the mask's device holding, for each anomalous pixel, the size of its region
        (0 for normal pixels); the number of regions; the number of anomalous pixels.

    Example:
        >>> sizes, count, anomalous = region_sizes(torch.tensor([[[1, 0, 0], [0, 1, 0], [0, 0, 0]]]) > 0)
        >>> count, anomalous, sizes[0, 0, 0].item()
        (1, 2, 2.0)
    """
    masks = mask.cpu().numpy()
    per_pixel = np.zeros(masks.shape, dtype=np.float32)
    flawed = np.flatnonzero(masks.reshape(len(masks), -1).any(axis=1))  # label only these images
    if flawed.size == 0:
        return torch.from_numpy(per_pixel).to(mask.device), 0, 0
    whole = flawed.size == len(masks)
    labels, count = ndimage.label(masks if whole else masks[flawed], structure=_STRUCTURE)
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    sizes[0] = 0
    if int(sizes.max()) > MAX_REGION:
        raise MetricInputError(f"a ground-truth region has {int(sizes.max())} pixels; at most {MAX_REGION} are supported.")
    if whole:
        np.take(sizes.astype(np.float32), labels, out=per_pixel)
    else:
        per_pixel[flawed] = np.take(sizes.astype(np.float32), labels)
    return torch.from_numpy(per_pixel).to(mask.device), int(count), int(sizes.sum())
