"""Checkpoint I/O that writes to a temporary file and renames: a killed run keeps its last good file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from anomaly.utils.atomic import atomic_save


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose saves are atomic (temporary file beside the target + ``os.replace``)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        atomic_save(path, lambda handle: torch.save(checkpoint, handle))
