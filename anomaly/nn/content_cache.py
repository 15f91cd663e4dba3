"""The one in-memory cache of what a frozen network computes from training images (DiAD's feature
latent, the flows' pooled features): values kept on the CPU under a hash of each image's content."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import torch
from torch import Tensor


def content_key(image: Tensor) -> bytes:
    """A 128-bit key of a CPU tensor's shape and values."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(str(tuple(image.shape)).encode())
    digest.update(image.contiguous().numpy().tobytes())
    return digest.digest()


class ContentCache:
    """``cache(images, compute)`` = ``compute(images)``, but each image's row is computed once.

    Keys are a 128-bit hash of the image's content and shape, so a changed image (augmentation, another
    crop) is a miss, never a stale value. Without augmentation every epoch after the first skips
    ``compute``; with it the cache fills up and rarely hits (leave it off then). ``compute`` must be a
    pure function of each image alone (a frozen network in eval mode), as the values are reused.

    Args:
        size: keep at most this many images' values (0: off, ``compute`` every time).
    """

    def __init__(self, size: int = 0) -> None:
        self.size = int(size)
        self._values: dict[bytes, Tensor] = {}

    def __len__(self) -> int:
        return len(self._values)

    def clear(self) -> None:
        """Forget every value (e.g. after the network that computes them changed)."""
        self._values.clear()

    def __call__(self, images: Tensor, compute: Callable[[Tensor], Tensor]) -> Tensor:
        if self.size <= 0:
            return compute(images)
        keys = [content_key(one) for one in images.detach().float().cpu()]
        missing = [i for i, key in enumerate(keys) if key not in self._values]
        found: dict[int, Tensor] = {}
        if missing:
            fresh = compute(images[missing])
            for i, value in zip(missing, fresh, strict=True):
                found[i] = value
                if len(self._values) < self.size:
                    self._values[keys[i]] = value.detach().cpu()
        return torch.stack(
            [found[i] if i in found else self._values[key].to(images.device) for i, key in enumerate(keys)]
        )
