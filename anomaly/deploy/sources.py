"""Which thresholds a checkpoint's detector uses, and those a checkpoint does not hold yet.

Training stores ``val`` (a validating run) or ``holdout`` (a run without a validation split:
``anomaly.engine.calibration``) in its checkpoints. Thresholds computed afterwards — an older
checkpoint, or ``threshold_source=test|train`` — go to a small JSON beside the checkpoint
(``<name>.ckpt.thresholds.json``, keyed by the checkpoint's size, mtime and step, so a replaced
checkpoint's are ignored); the checkpoint itself is never rewritten.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from anomaly.config.check import ConfigError
from anomaly.deploy.thresholds import stored
from anomaly.engine.calibration import SOURCE as HOLDOUT
from anomaly.engine.calibration import cross_fit, normal_statistics, score_normal
from anomaly.engine.console import quiet_lightning
from anomaly.models.base import AnomalyModule
from anomaly.utils.atomic import atomic_write_json

SPLIT_NAMES = {"val": "validation split", "test": "test split", "train": "normal training images (in sample)",
               HOLDOUT: "normal training images held out of the fit"}
SOURCE_NAMES = {"val": "F1-optimal on the validation split", "test": "F1-optimal on the test split",
                "train": "highest in-sample training score", "override": "given on the command line",
                HOLDOUT: "normal training images the model did not fit"}


def resolve_source(payload: dict[str, Any], source: str, path: Path) -> str:
    """``auto``: the validation thresholds when the run validated, else ``holdout`` (normal training
    images the model did not fit; a run with ``data.val=none``, e.g. PaDiM's recipe). The test split
    and the in-sample training scores are used only when asked for."""
    if source != "auto":
        return source
    if stored(payload, "val") is not None:
        return "val"
    data = (payload.get("anomaly_config") or {}).get("data") or {}
    return HOLDOUT if data.get("val", "none") == "none" else "val"


def ensure_thresholds(path: Path, payload: dict[str, Any], model: AnomalyModule, source: str) -> dict[str, Any]:
    """The checkpoint's ``source`` thresholds: stored in it, else beside it, else computed on its run's
    data and kept beside it for next time."""
    entry = stored(payload, source) or beside(path, payload, source)
    if entry is not None:
        return entry
    datamodule = run_datamodule(payload, path)
    if source == "val" and datamodule.val == "none":
        raise ConfigError(
            f"ckpt_path={path} was trained with data.val=none, so it has no validation thresholds; pass "
            "threshold_source=holdout (held-out normal training images), threshold_source=test (F1-optimal on "
            "the test split, recorded as such) or threshold=<score>."
        )
    print(f"thresholds: computing them on the {SPLIT_NAMES[source]} of {path} (kept in {sidecar(path).name})",
          file=sys.stderr)
    step = int(payload.get("global_step", -1))
    if source == HOLDOUT:
        entry = holdout_thresholds(path, payload, model, datamodule)
    elif source == "train":
        entry = train_thresholds(model, datamodule, step)
    else:
        quiet_lightning()
        trainer = _trainer(1)
        run = trainer.validate if source == "val" else trainer.test
        run(model, datamodule=datamodule, verbose=False)
        entry = dict(model.thresholds[source])
        entry["global_step"] = step
    keep_beside(path, payload, source, entry)
    return entry


def holdout_thresholds(path: Path, payload: dict[str, Any], model: AnomalyModule, datamodule: Any) -> dict[str, Any]:
    """``holdout`` thresholds for a checkpoint trained before training stored them: a method whose fit is
    cheap statistics refits a copy without the calibration fold; any other fitted every image."""
    if not type(model).refit_after_calibration:
        raise ConfigError(
            f"ckpt_path={path} has no held-out thresholds (it was trained before anomaly.train computed them, "
            f"on all its normal images); re-train it, or pass threshold=<score>, threshold_source=test "
            "(F1-optimal on the test split) or threshold_source=train (in sample: flags most unseen images)."
        )
    if not datamodule.calibration_folds():
        raise ConfigError(f"ckpt_path={path} was trained with data.calibration_fraction=0, so no normal image can "
                          "be held out; pass threshold=<score> or another threshold_source.")
    quiet_lightning()
    trainer = (payload.get("anomaly_config") or {}).get("trainer") or {}  # data: only its epoch count is read
    max_epochs = int(trainer.get("max_epochs") or 1)
    return cross_fit(model, datamodule, lambda: _trainer(max_epochs))


def _trainer(max_epochs: int) -> L.Trainer:
    return L.Trainer(accelerator="cpu", devices=1, max_epochs=max_epochs, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False)


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


def train_thresholds(model: AnomalyModule, datamodule: Any, global_step: int) -> dict[str, Any]:
    """The highest score and map value of the normal training images the model fitted (in sample)."""
    loader = datamodule.normal_train_dataloader()
    # A copy: scoring fits and then drops the calibration, which the detector keeps.
    per = score_normal(copy.deepcopy(model), loader, loader, torch.device("cpu"))
    return normal_statistics(per, global_step, stage="train", false_positives=0.0)


def sidecar(path: Path) -> Path:
    """The JSON beside a checkpoint holding thresholds computed after training: ``last.ckpt.thresholds.json``."""
    return path.with_name(path.name + ".thresholds.json")


def _key(path: Path, payload: dict[str, Any]) -> dict[str, int]:
    """What identifies the checkpoint's bytes: a retrained or replaced checkpoint has another key."""
    status = path.stat()
    return {"size": status.st_size, "mtime_ns": status.st_mtime_ns, "global_step": int(payload.get("global_step", -1))}


def beside(path: Path, payload: dict[str, Any], source: str) -> dict[str, Any] | None:
    """The ``source`` thresholds kept beside the checkpoint, if they are of this very checkpoint."""
    try:
        kept = json.loads(sidecar(path).read_text())
        if kept.get("checkpoint") != _key(path, payload):
            return None
        entry = kept["thresholds"][source]
        return entry if isinstance(entry, dict) and isinstance(entry.get("groups"), dict) else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def keep_beside(path: Path, payload: dict[str, Any], source: str, entry: dict[str, Any]) -> None:
    """Add ``entry`` to the JSON beside the checkpoint, atomically (used for this run only if it cannot be written)."""
    key = _key(path, payload)
    try:
        kept = json.loads(sidecar(path).read_text())
        thresholds = kept["thresholds"] if kept.get("checkpoint") == key else {}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        thresholds = {}
    try:
        atomic_write_json(sidecar(path), {"checkpoint": key, "thresholds": {**thresholds, source: entry}})
    except OSError as error:
        print(f"thresholds: could not keep them in {sidecar(path)} ({error}); they are used for this run only",
              file=sys.stderr)
