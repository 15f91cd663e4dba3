"""Re-test trained models: ``python -m anomaly.evaluate ckpt_path=<run>/checkpoints/last.ckpt``.

``ckpt_path`` is a checkpoint file or a run folder (every ``last.ckpt`` under its ``checkpoints/``,
one per category in the ``separate`` setting). The model and data are rebuilt from the config
stored in the checkpoint; ``data.*`` overrides apply on top (e.g. another ``data.root``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

import anomaly.config.resolvers  # noqa: F401 - registers ${anomaly.*} resolvers
from anomaly.callbacks.heatmaps import HeatmapWriter
from anomaly.callbacks.results import mean_over_categories, print_table, write_metrics
from anomaly.config.check import to_plain
from anomaly.config.precheck import launch
from anomaly.models.base import AnomalyModule
from anomaly.utils.errors import user_errors


class CheckpointError(ValueError):
    """A checkpoint path that holds no model this project can re-test."""


def find_checkpoints(path: str | Path) -> list[Path]:
    """The checkpoint file itself, or every ``last.ckpt`` under a run folder's ``checkpoints/``."""
    path = Path(path).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        found = sorted(path.glob("checkpoints/**/last.ckpt")) or sorted(path.glob("**/last.ckpt"))
        if found:
            return found
    raise CheckpointError(f"ckpt_path={path} is neither a checkpoint file nor a run folder with checkpoints/last.ckpt.")


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint written by ``anomaly.train`` (with its run config), or a clear error."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # noqa: BLE001 - torch raises many types for bad files
        raise CheckpointError(f"ckpt_path={path} is not a readable checkpoint ({type(error).__name__}).") from error
    if "anomaly_config" not in payload:
        raise CheckpointError(f"ckpt_path={path} was not written by anomaly.train (no run config inside); "
                              "re-train with python -m anomaly.train.")
    return payload


def evaluate(cfg: DictConfig) -> dict[str, dict[str, float | None]]:
    """Test every checkpoint under ``cfg.ckpt_path``; returns per-category metrics and the mean."""
    output_dir = Path(cfg.paths.output_dir)
    per_category: dict[str, dict[str, float | None]] = {}
    pooled: dict[str, float | None] = {}
    checkpoints = find_checkpoints(cfg.ckpt_path)
    for path in checkpoints:
        payload = load_checkpoint(path)
        run = OmegaConf.create(payload["anomaly_config"])
        data_cfg = OmegaConf.merge(run.data, cfg.get("data") or {})
        # Rebuild without pretrained files (the checkpoint holds every weight), then the metric options.
        model_cfg = OmegaConf.merge(run.model, payload.get("anomaly_restore") or {}, cfg.get("metrics") or {})
        L.seed_everything(cfg.seed, workers=True)
        categories = payload.get("anomaly_categories") or data_cfg.category
        datamodule = instantiate(data_cfg, category=categories, synthesis=None)
        model = instantiate(model_cfg)
        expected = payload.get("anomaly_method")
        mine = f"{type(model).__module__}.{type(model).__qualname__}"
        if not isinstance(model, AnomalyModule) or (expected and expected != mine):
            raise CheckpointError(f"ckpt_path={path} holds {expected or 'an unknown model'}, which cannot be re-tested "
                                  f"as {mine}; give a checkpoint of an anomaly detection method.")
        model.load_state_dict(payload["state_dict"])
        loggers = [instantiate(node) for node in (cfg.get("logger") or {}).values() if node and node.get("_target_")]
        trainer = instantiate(cfg.trainer, logger=loggers or False,
                              callbacks=[HeatmapWriter(n_images=8, dirpath=output_dir / "images")])
        trainer.test(model, datamodule=datamodule, verbose=False)
        results = dict(model.test_results)
        unit_pooled = results.pop("pooled", {})
        pooled = unit_pooled if len(checkpoints) == 1 else {}
        results.pop("mean", None)
        per_category.update(results)
    summary = {"mean": mean_over_categories(per_category), **({"pooled": pooled} if pooled and len(per_category) > 1 else {})}
    write_metrics(output_dir / "metrics.json", {"checkpoints": [str(p) for p in checkpoints], "categories": per_category,
                                                 **summary, "config": to_plain(cfg)})
    print_table(per_category, summary, title=f"evaluate — {cfg.ckpt_path}")
    return {**per_category, **summary}


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def _hydra_main(cfg: DictConfig) -> None:
    with user_errors():
        evaluate(cfg)


def main() -> None:
    """Entry point: check overrides first, then run Hydra."""
    launch("eval", _hydra_main)


if __name__ == "__main__":
    main()
