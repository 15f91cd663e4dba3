"""Stores the run's resolved config in every checkpoint, so a checkpoint can be re-tested alone."""

from __future__ import annotations

from typing import Any

import lightning as L


class ConfigInCheckpoint(L.Callback):
    """Adds ``checkpoint["anomaly_config"]`` (the resolved run config as plain containers)."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        checkpoint["anomaly_config"] = self.config
