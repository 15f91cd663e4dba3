"""Objects of a run, built from its config: model, data, callbacks, loggers, trainer."""

from __future__ import annotations

from typing import Any

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict

from anomaly.callbacks.run_config import ConfigInCheckpoint
from anomaly.models.base import plain


def for_unit(cfg: DictConfig, unit: str) -> DictConfig:
    """The run config with ``unit`` set (the category fitted in the ``separate`` setting, or ``""``):
    checkpoint folders and logger versions interpolate it."""
    unit_cfg = cfg.copy()
    with open_dict(unit_cfg):
        unit_cfg.unit = unit
    return unit_cfg


def build_model(cfg: DictConfig, **overrides: Any) -> L.LightningModule:
    """The method of ``cfg.model``, with the run's metric options (``evaluator`` group) when it takes them."""
    extra = {"evaluator": plain(cfg.evaluator)} if cfg.get("evaluator") is not None and _evaluates(cfg.model) else {}
    return instantiate(cfg.model, **extra, **overrides)


def _evaluates(model_cfg: DictConfig) -> bool:
    from hydra.utils import get_class

    from anomaly.models.base import AnomalyModule

    return issubclass(get_class(model_cfg._target_), AnomalyModule)


def build_datamodule(cfg: DictConfig, **overrides: Any) -> L.LightningDataModule:
    """The data module of ``cfg.data`` with the training synthesis strategy of ``cfg.synthesis``."""
    node = cfg.get("synthesis")
    synthesis = instantiate(node) if node and node.get("_target_") else None
    return instantiate(cfg.data, synthesis=synthesis, **overrides)


def build_callbacks(cfg: DictConfig, config: dict[str, Any] | None = None) -> list[L.Callback]:
    """The configured callbacks; with ``config``, also the one storing the run config in checkpoints."""
    callbacks: list[L.Callback] = [ConfigInCheckpoint(config)] if config is not None else []
    for node in (cfg.get("callbacks") or {}).values():
        if node and node.get("_target_"):
            callbacks.append(instantiate(node))
    return callbacks


def build_loggers(cfg: DictConfig, config: dict[str, Any] | None = None) -> list[Any]:
    """The configured loggers (none when ``logger=none``), given the run config as hyperparameters."""
    loggers = [instantiate(node) for node in (cfg.get("logger") or {}).values() if node and node.get("_target_")]
    for logger in loggers:
        if config is not None:
            logger.log_hyperparams(config)
    return loggers


def build_trainer(cfg: DictConfig, callbacks: list[L.Callback], loggers: list[Any]) -> L.Trainer:
    """The Lightning Trainer of ``cfg.trainer``."""
    return instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)


def finish_loggers(loggers: list[Any]) -> None:
    """Close each logger's run, so the next category starts a run of its own (W&B keeps one per process)."""
    for logger in loggers:
        experiment = getattr(logger, "_experiment", None)
        if experiment is not None and hasattr(experiment, "finish"):
            experiment.finish()


