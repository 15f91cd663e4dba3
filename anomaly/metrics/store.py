"""The exact-mode state: packed keys in large pages of a torchmetrics list state, sorted in place.

Batches are packed straight into pages of ``PAGE`` keys (64 MiB, so the allocator maps them
separately and gives them back when freed). Computing consolidates the pages into one array (each
page freed as it is copied) and sorts it in place: the stored samples stay the same, only their
order changes, and no second copy of the data is needed.
"""

from __future__ import annotations

import weakref

import numpy as np
import torch
from torch import Tensor

from anomaly.metrics.exact import sort_keys
from anomaly.metrics.keys import concatenate, pack_into, pack_torch

#: Keys per page (64 MiB).
PAGE = 1 << 23


class KeyPages:
    """Appends packed keys to a list state, filling one page before starting the next."""

    def __init__(self) -> None:
        self.forget()

    def forget(self) -> None:
        """Drop the current page (after a reset or a consolidation)."""
        self._page: np.ndarray | None = None
        self._view: Tensor | None = None
        self._filled = 0
        self._sorted: weakref.ref[Tensor] | None = None  # the tensor last sorted in place

    def append(self, state: list[Tensor], scores: Tensor, payload: Tensor) -> None:
        """Pack ``scores`` (finite float32, no -0.0) and ``payload`` (integers) into ``state``."""
        if scores.device.type != "cpu":
            state.append(pack_torch(scores, payload))
            return
        size = scores.numel()
        current = self._view is not None and bool(state) and state[-1] is self._view
        if not current or self._page is None or self._page.size - self._filled < size:
            self._page, self._filled, current = np.empty(max(PAGE, size), dtype=np.int64), 0, False
        pack_into(scores, payload, self._page[self._filled:self._filled + size])
        self._filled += size
        self._view = torch.from_numpy(self._page[:self._filled])
        if current:
            state[-1] = self._view
        else:
            state.append(self._view)

    def sorted_keys(self, state: list[Tensor] | Tensor) -> np.ndarray:
        """All keys of ``state`` sorted ascending: in place on the CPU, else in a host copy.

        ``state`` is the list state, or the one tensor a DDP gather leaves (a temporary, which
        torchmetrics replaces by the local state afterwards).
        """
        parts = [state] if isinstance(state, Tensor) else state
        if any(k.device.type != "cpu" for k in parts):
            keys = concatenate(parts)
            sort_keys(keys)
            return keys
        if not isinstance(state, Tensor) and sum(1 for k in state if k.numel()) > 1:
            self.forget()
            state[:] = [torch.from_numpy(_consolidate(state))]
        found = [k for k in parts if k.numel()]
        if not found:
            return np.empty(0, dtype=np.int64)
        keys = found[0].numpy()
        if self._sorted is None or self._sorted() is not found[0]:
            sort_keys(keys)
            self._sorted = weakref.ref(found[0])
        return keys


def _consolidate(chunks: list[Tensor]) -> np.ndarray:
    """One array holding the CPU key ``chunks``, emptying the list as it goes."""
    out = np.empty(sum(c.numel() for c in chunks), dtype=np.int64)
    end = out.size
    while chunks:
        chunk = chunks.pop()
        out[end - chunk.numel():end] = chunk.numpy()
        end -= chunk.numel()
        del chunk
    return out
