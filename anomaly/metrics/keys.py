"""Sort keys that order (score, payload) pairs with one integer sort.

A key is one int64: the float32 score mapped to an order-preserving int32 in the high 32 bits and
a non-negative integer payload (image label, or the size of the pixel's ground-truth region) in the
low 32 bits. Sorting the keys sorts by score; equal scores end up next to each other, which is all
the curve kernels need (ties are merged into one threshold). Exact mode stores these keys as its
state (8 bytes per sample), so computing needs no second copy of the data.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

_LITTLE = sys.byteorder == "little"


def high_half(keys: np.ndarray) -> np.ndarray:
    """A writable int32 view of the high (score) halves of int64 keys."""
    return keys.view(np.int32)[1::2] if _LITTLE else keys.view(np.int32)[0::2]


def low_half(keys: np.ndarray) -> np.ndarray:
    """A writable uint32 view of the low (payload) halves of int64 keys."""
    return keys.view(np.uint32)[0::2] if _LITTLE else keys.view(np.uint32)[1::2]


def score_order(scores: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Map float32 scores to int32 values with the same order (-0.0 must already be +0.0)."""
    bits = scores.view(np.int32)
    flip = np.right_shift(bits, 31)
    np.bitwise_and(flip, np.int32(0x7FFFFFFF), out=flip)
    return np.bitwise_xor(bits, flip, out=out)


def order_score(order: np.ndarray) -> np.ndarray:
    """The float32 scores of ``score_order`` values (the map is its own inverse)."""
    return score_order(np.asarray(order, dtype=np.int32).view(np.float32)).view(np.float32)


def pack_into(scores: Tensor, payload: Tensor, out: np.ndarray) -> None:
    """Write the keys of CPU ``scores`` (finite float32, 1-D, no -0.0) and ``payload`` (integer-valued,
    in [0, 2**32)) into the int64 array ``out``.

    Example:
        >>> keys = np.empty(3, dtype=np.int64)
        >>> pack_into(torch.tensor([0.5, -1.0, 0.5]), torch.tensor([3.0, 0.0, 0.0]), keys)
        >>> keys.argsort(kind="stable").tolist(), (keys & 0xFFFFFFFF).tolist()
        ([1, 2, 0], [3, 0, 0])
    """
    score_order(scores.numpy(), out=high_half(out))
    np.copyto(low_half(out), payload.numpy(), casting="unsafe")


def pack_torch(scores: Tensor, payload: Tensor) -> Tensor:
    """:func:`pack` with torch operations (for tensors on accelerators)."""
    bits = scores.view(torch.int32)
    order = bits ^ ((bits >> 31) & 0x7FFFFFFF)
    return (order.to(torch.int64) << 32) | payload.to(torch.int64)


def concatenate(parts: Sequence[Tensor]) -> np.ndarray:
    """The keys of several tensors in one new numpy array (on the CPU)."""
    keys = np.empty(sum(p.numel() for p in parts), dtype=np.int64)
    offset = 0
    for part in parts:
        keys[offset:offset + part.numel()] = part.detach().cpu().numpy()
        offset += part.numel()
    return keys
