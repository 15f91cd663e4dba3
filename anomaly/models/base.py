"""AnomalyModule: turns a method's ``forward(image) -> (map, score)`` into evaluation and results."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
from torch import Tensor

from anomaly.metrics import DEFAULT_BINS, METRIC_NAMES, AnomalyMetrics


class NonFiniteOutputError(RuntimeError):
    """A method produced NaN or inf anomaly scores."""


class AnomalyModule(L.LightningModule):
    """Base of every method: validation/test steps, per-category metrics, results and heatmaps.

    Subclasses implement ``forward(image) -> (anomaly_map B×1×H×W at input size, score B)`` (higher
    means more anomalous) and how they learn (``training_step``, ``configure_optimizers``).

    Args:
        metrics: which metrics to compute (``anomaly.metrics.METRIC_NAMES`` by default).
        metrics_mode: ``exact`` (final numbers) or ``binned`` (bounded memory).
        metrics_bins: number of bins in ``binned`` mode.
    """

    def __init__(
        self,
        metrics: Sequence[str] = METRIC_NAMES,
        metrics_mode: str = "exact",
        metrics_bins: int = DEFAULT_BINS,
    ) -> None:
        super().__init__()
        self.metric_names = tuple(metrics)
        self.metrics_mode = metrics_mode
        self.metrics_bins = metrics_bins
        self.evaluator: AnomalyMetrics | None = None
        self.test_results: dict[str, dict[str, float]] = {}
        self.categories: list[str] = []

    # -- evaluation -------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        """Create the metric collection for the categories of the attached data module."""
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if datamodule is not None and hasattr(datamodule, "categories"):
            self.categories = list(datamodule.categories)

    def _evaluator(self) -> AnomalyMetrics:
        if self.evaluator is None:
            if not self.categories:
                raise RuntimeError("AnomalyModule needs its categories: attach an AnomalyDataModule.")
            self.evaluator = AnomalyMetrics(
                categories=self.categories,
                metrics=self.metric_names,
                mode=self.metrics_mode,
                bins=self.metrics_bins,
            ).to(self.device)
        return self.evaluator

    def predict_batch(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor]:
        """Anomaly maps and scores of a batch, checked to be finite."""
        anomaly_map, score = self(batch["image"])
        if not (torch.isfinite(anomaly_map).all() and torch.isfinite(score).all()):
            raise NonFiniteOutputError(
                f"{type(self).__name__} produced NaN/inf anomaly scores for the batch starting with "
                f"{batch['path'][0]}; the model diverged or its statistics are degenerate — retrain it."
            )
        return anomaly_map, score

    def on_test_epoch_start(self) -> None:
        self._evaluator().reset()

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Tensor]:
        anomaly_map, score = self.predict_batch(batch)
        self._evaluator().update(batch["category"], anomaly_map, score, batch["mask"], batch["label"])
        return {"anomaly_map": anomaly_map, "score": score}

    def on_test_epoch_end(self) -> None:
        results = self._evaluator().compute()
        self.test_results = results
        for group, values in results.items():
            for name, value in values.items():
                if value is not None and not (isinstance(value, float) and math.isnan(value)):
                    self.log(f"test/{group}/{name}", float(value), sync_dist=False, rank_zero_only=True)

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        anomaly_map, score = self.predict_batch(batch)
        return {"anomaly_map": anomaly_map, "score": score, "path": batch["path"]}

    # -- checkpoints ------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Record the method and its categories so a checkpoint can be re-tested on its own."""
        checkpoint["anomaly_method"] = f"{type(self).__module__}.{type(self).__qualname__}"
        checkpoint["anomaly_categories"] = list(self.categories)
        checkpoint["anomaly_restore"] = self.restore_overrides()

    def restore_overrides(self) -> dict[str, Any]:
        """Overrides of the run's ``model`` config that rebuild this model without reading any
        pretrained file (backbone, UNet or autoencoder weights): ``anomaly.evaluate`` applies them
        before loading the checkpoint, which holds every weight, so a checkpoint re-tests after
        those files are gone. Default: none."""
        return {}
