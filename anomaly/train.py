"""Train and test a method: ``python -m anomaly.train model=padim data=mvtec data.category=bottle``.

In the ``separate`` setting one model is trained and tested per category, one after another; in
``unified`` one model covers all categories. The run folder gets checkpoints, ``metrics.json``,
heatmaps and the logger's files.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

import anomaly.config.resolvers  # noqa: F401 - registers ${anomaly.*} resolvers
from anomaly.callbacks.results import mean_over_categories, print_table, write_metrics
from anomaly.callbacks.run_config import ConfigInCheckpoint
from anomaly.config.check import check_targets, to_plain
from anomaly.config.precheck import launch
from anomaly.utils.atomic import atomic_write_json
from anomaly.utils.errors import user_errors


class CheckpointError(ValueError):
    """A checkpoint that does not belong to this run's method."""


def build_callbacks(cfg: DictConfig, checkpoint_dir: Path, config: dict[str, Any]) -> list[L.Callback]:
    """The configured callbacks, with checkpoints written to ``checkpoint_dir``."""
    callbacks: list[L.Callback] = [ConfigInCheckpoint(config)]
    for name, node in (cfg.get("callbacks") or {}).items():
        if node and node.get("_target_"):
            overrides = {"dirpath": str(checkpoint_dir)} if name == "model_checkpoint" else {}
            callbacks.append(instantiate(node, **overrides))
    return callbacks


def build_loggers(cfg: DictConfig) -> list[Any]:
    """The configured loggers (none when ``logger=none``)."""
    return [instantiate(node) for node in (cfg.get("logger") or {}).values() if node and node.get("_target_")]


def check_checkpoint(path: str | None, target: str) -> None:
    """Refuse to resume from a checkpoint written by another method (``target``), naming both."""
    if not path or not Path(path).is_file():
        return
    payload = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    method = payload.get("anomaly_method")
    mine = str(target)
    if method is not None and method != mine:
        raise CheckpointError(f"ckpt_path={path} was written by {method}, not {mine}; pick a checkpoint of this model.")


def resolve_resume(ckpt_path: str | None, checkpoint_dir: Path) -> str | None:
    """``ckpt_path=last`` means this run's last checkpoint (if it exists)."""
    if ckpt_path == "last":
        last = checkpoint_dir / "last.ckpt"
        return str(last) if last.is_file() else None
    if ckpt_path and not Path(ckpt_path).is_file():
        raise CheckpointError(f"ckpt_path={ckpt_path} does not exist; give a .ckpt file or ckpt_path=last.")
    return ckpt_path


def train(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """Fit and test the configured model on the configured data; returns (metrics, objects).

    The metrics dict maps ``test/<category>/<metric>`` and ``test/mean/<metric>`` to floats, so an
    Optuna sweep can optimise ``cfg.optimized_metric``.
    """
    check_targets(cfg)
    if cfg.get("ckpt_path") not in (None, "last"):
        check_checkpoint(resolve_resume(cfg.ckpt_path, Path()), cfg.model._target_)
    config = to_plain(cfg)
    L.seed_everything(cfg.seed, workers=True)
    output_dir = Path(cfg.paths.output_dir)
    first_model = instantiate(cfg.model)  # model options fail here, before any data is read
    synthesis = instantiate(cfg.synthesis) if cfg.get("synthesis") and cfg.synthesis.get("_target_") else None
    datamodule = instantiate(cfg.data, synthesis=synthesis)
    categories = datamodule.categories
    if hasattr(datamodule.layout, "split_listing"):  # layouts without an official split (MTD) record theirs
        atomic_write_json(output_dir / "split.json", datamodule.layout.split_listing(datamodule.root))
    units: list[str | None] = [None] if datamodule.setting == "unified" or len(categories) == 1 else list(categories)
    loggers = build_loggers(cfg)
    for logger in loggers:
        logger.log_hyperparams(config)

    per_category: dict[str, dict[str, float | None]] = {}
    pooled: dict[str, float | None] = {}
    timing: dict[str, dict[str, float]] = {}
    model = trainer = None
    for unit in units:
        unit_data = datamodule if unit is None else datamodule.for_category(unit)
        checkpoint_dir = output_dir / "checkpoints" / (unit or "")
        L.seed_everything(cfg.seed, workers=True)
        model, first_model = first_model or instantiate(cfg.model), None
        resume = resolve_resume(cfg.get("ckpt_path"), checkpoint_dir)
        check_checkpoint(resume, cfg.model._target_)
        trainer = instantiate(cfg.trainer, callbacks=build_callbacks(cfg, checkpoint_dir, config), logger=loggers or False)
        start = time.perf_counter()
        trainer.fit(model, datamodule=unit_data, ckpt_path=resume)
        fit_s = time.perf_counter() - start
        if not cfg.get("test", True) or not hasattr(model, "test_results"):
            continue
        start = time.perf_counter()
        trainer.test(model, datamodule=unit_data, verbose=False)
        timing[unit or "all"] = {"fit_s": round(fit_s, 3), "test_s": round(time.perf_counter() - start, 3)}
        results = dict(model.test_results)
        unit_pooled = results.pop("pooled", {})
        pooled = unit_pooled if unit is None else pooled
        results.pop("mean", None)
        per_category.update(results)

    metrics: dict[str, Any] = {}
    if per_category and (trainer is None or trainer.is_global_zero):
        mean = mean_over_categories(per_category)
        summary = {"mean": mean, **({"pooled": pooled} if pooled and len(per_category) > 1 else {})}
        write_metrics(
            output_dir / "metrics.json",
            {"method": cfg.model._target_, "setting": datamodule.setting, "seed": cfg.seed,
             "categories": per_category, **summary, "timing": timing, "config": config},
        )
        print_table(per_category, summary, title=f"{cfg.model._target_.rsplit('.', 1)[-1]} — {output_dir}")
    if per_category:
        for group, values in {**per_category, "mean": mean_over_categories(per_category)}.items():
            metrics.update({f"test/{group}/{k}": v for k, v in values.items()})
    return metrics, {"model": model, "trainer": trainer, "datamodule": datamodule}


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def _hydra_main(cfg: DictConfig) -> float | None:
    with user_errors():
        metrics, _ = train(cfg)
    value = metrics.get(cfg.get("optimized_metric"))
    return float(value) if value is not None else None


def main() -> None:
    """Entry point: check overrides first, then run Hydra."""
    launch("train", _hydra_main)


if __name__ == "__main__":
    main()
