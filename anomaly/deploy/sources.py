"""Thresholds a checkpoint does not hold yet, computed on its run's data and stored in it (atomically)."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from anomaly.config.check import ConfigError
from anomaly.deploy.thresholds import normal_statistics, stored
from anomaly.engine.console import quiet_lightning
from anomaly.models.base import AnomalyModule
from anomaly.utils.atomic import atomic_save

SPLIT_NAMES = {"val": "validation split", "test": "test split", "train": "normal training images"}


def resolve_source(payload: dict[str, Any], source: str, path: Path) -> str:
    """``auto``: the validation thresholds when the run validated, else the normal training images
    (a run with ``data.val=none``, e.g. PaDiM's recipe, has no validation split; the test split is
    used only when asked for)."""
    if source != "auto":
        return source
    if stored(payload, "val") is not None:
        return "val"
    data = (payload.get("anomaly_config") or {}).get("data") or {}
    return "train" if data.get("val", "none") == "none" else "val"


def ensure_thresholds(path: Path, payload: dict[str, Any], model: AnomalyModule, source: str) -> dict[str, Any]:
    """The checkpoint's ``source`` thresholds; computed on its run's data and written into it if missing."""
    entry = stored(payload, source)
    if entry is not None:
        return entry
    datamodule = run_datamodule(payload, path)
    if source == "val" and datamodule.val == "none":
        raise ConfigError(
            f"ckpt_path={path} was trained with data.val=none, so it has no validation thresholds; pass "
            "threshold_source=train (normal training scores), threshold_source=test (F1-optimal on the test "
            "split, recorded as such) or threshold=<score>."
        )
    print(f"thresholds: computing them on the {SPLIT_NAMES[source]} of {path} (stored in it for next time)",
          file=sys.stderr)
    if source == "train":
        entry = train_thresholds(model, datamodule, int(payload.get("global_step", -1)))
    else:
        quiet_lightning()
        trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False)
        run = trainer.validate if source == "val" else trainer.test
        run(model, datamodule=datamodule, verbose=False)
        entry = dict(model.thresholds[source])
        entry["global_step"] = int(payload.get("global_step", -1))
    write_thresholds(path, source, entry)
    return entry


def run_datamodule(payload: dict[str, Any], path: Path) -> Any:
    """The data module of the checkpoint's run, restricted to its categories, without synthesis."""
    config = payload.get("anomaly_config")
    if not config or "data" not in config:
        raise ConfigError(f"ckpt_path={path} holds no run config, so its data cannot be found to compute "
                          "thresholds; pass threshold=<score> or re-train with python -m anomaly.train.")
    data = OmegaConf.create(config["data"])
    if payload.get("anomaly_categories"):
        data.category = list(payload["anomaly_categories"])
    return instantiate(data, synthesis=None)


@torch.inference_mode()
def train_thresholds(model: AnomalyModule, datamodule: Any, global_step: int) -> dict[str, Any]:
    """Scores and map ranges of the normal training images, per category."""
    model.eval()
    if model.calibration is not None:
        with torch.inference_mode(False):
            model.fit_calibration(datamodule.normal_train_dataloader())
    per: dict[str, tuple[list[float], float, float]] = {}
    for batch in datamodule.normal_train_dataloader():
        output = model.evaluate_batch(batch)
        for i, category in enumerate(batch["category"]):
            scores, low, high = per.get(category, ([], math.inf, -math.inf))
            scores.append(float(output.score[i]))
            one = output.anomaly_map[i]
            per[category] = (scores, min(low, float(one.min())), max(high, float(one.max())))
    return normal_statistics(per, global_step)


def write_thresholds(path: Path, source: str, entry: dict[str, Any]) -> None:
    """Add ``entry`` to the checkpoint's ``anomaly_thresholds`` in one atomic rewrite (kept if read-only)."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        payload["anomaly_thresholds"] = {**(payload.get("anomaly_thresholds") or {}), source: entry}
        atomic_save(path, lambda handle: torch.save(payload, handle))
    except OSError as error:
        print(f"thresholds: could not store them in {path} ({error}); they are used for this run only",
              file=sys.stderr)
