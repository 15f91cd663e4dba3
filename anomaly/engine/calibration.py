"""Default thresholds for runs without a validation split, from normal images the model did not fit.

With ``data.val=none`` (PaDiM's recipe) a run has no held-out images to set thresholds on, and the
training images' own scores are in-sample (PaDiM: ~8, where unseen normal images score 160–340). So
seeded folds of the normal training images (``data.calibration_fraction`` each, drawn like the
validation split, listed in ``calibration_split.json``) are held out of a fit and scored, and the
``holdout`` thresholds (:func:`normal_statistics`) go into the run's checkpoints at train time:

- methods whose fit is cheap statistics (``AnomalyModule.refit_after_calibration``: PaDiM) cross-fit:
  a copy fitted without each fold scores that fold (every normal image scored by a model that did not
  see it), then the run's model fits all normal images as before — its test metrics and weights are
  the paper's protocol. The thresholds are conservative: the final model fits 1/(1-fraction) times as
  many images, so unseen images score lower under it than the folds did under the copies (PaDiM on the
  synthetic set: median 167–236 against 215–269). A method may compute the copies' outputs without
  refitting (``AnomalyModule.cross_fit_outputs``): PaDiM subtracts each fold's sums from the total's,
  about two backbone passes in all instead of a fit per fold (it refits copies with ``model.calibrate``,
  another trainer precision than 32-true/16-mixed/bf16-mixed, or capped training batches);
- other methods keep fold 0 out of their one fit and score it with the fitted weights.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.fabric.utilities.apply_func import move_data_to_device
from lightning.fabric.utilities.seed import _collect_rng_states, _set_rng_states
from omegaconf import DictConfig

from anomaly.models.base import AnomalyModule
from anomaly.models.outputs import AnomalyOutput
from anomaly.utils.atomic import atomic_save, atomic_write_json

Normal = dict[str, dict[str, Any]]  # category -> {"scores": [...], "map_max": [...], "map_min": float}

SOURCE = "holdout"
LISTING = "calibration_split.json"
FALSE_POSITIVES = 0.1  # the share of unseen normal images the holdout threshold may flag (see normal_statistics)


def fit_calibrated(cfg: DictConfig, trainer: L.Trainer, model: L.LightningModule, data: Any, resume: str | None,
                   fit: Callable[..., None], output_dir: Path, checkpoint_dir: Path) -> None:
    """``fit(trainer, model, data, resume)`` with ``holdout`` thresholds stored in the checkpoints it writes
    (``cfg.trainer`` fits the copy; ``output_dir``: the run folder; ``checkpoint_dir``: the unit's)."""
    if not needs_calibration(model, data):
        fit(trainer, model, data, resume)
        return
    refit = type(model).refit_after_calibration
    if trainer.is_global_zero:
        record_folds(data, data.calibration_folds() if refit else 1, output_dir)
    if refit:
        if trainer.is_global_zero:  # only rank zero writes checkpoints
            with _same_random_state():  # the run's own fit draws exactly what it drew before
                model.thresholds[SOURCE] = cross_fit(model, data, lambda: bare_trainer(cfg, trainer.strategy.root_device))
        fit(trainer, model, data, resume)
        return
    held_out = data.without_calibration_fold(0)
    fit(trainer, model, held_out, resume)
    entry = normal_statistics(score_fold(model, held_out, trainer.strategy.root_device), int(trainer.global_step))
    model.thresholds[SOURCE] = entry
    if trainer.is_global_zero:
        add_to_checkpoints(checkpoint_dir, int(trainer.global_step), entry)


def needs_calibration(model: L.LightningModule, data: Any) -> bool:
    """Whether ``model`` is an anomaly method fitted on ``data`` without a validation split (and a fold to hold out)."""
    return isinstance(model, AnomalyModule) and bool(getattr(data, "calibration_fold", list)())


def cross_fit(model: AnomalyModule, data: Any, trainer: Callable[[], L.Trainer]) -> dict[str, Any]:
    """For each calibration fold, a copy of ``model`` (a ``refit_after_calibration`` method: a new fit
    replaces the old) fitted without it scores it; the ``holdout`` entry of all folds, valid at any step.
    A method may compute the same outputs faster (``AnomalyModule.cross_fit_outputs``: PaDiM's sums)."""
    per: Normal = {}
    fast = model.cross_fit_outputs(data, trainer())
    if fast is not None:
        for batch, output in fast:
            add_outputs(per, batch["category"], output)
    else:
        for fold in range(data.calibration_folds()):
            held_out = data.without_calibration_fold(fold)
            if not held_out.calibration_fold(fold):
                continue
            copied = copy.deepcopy(model)
            fitter = trainer()
            fitter.fit(copied, datamodule=held_out)
            score_fold(copied, held_out, fitter.strategy.root_device, per)
    return {**normal_statistics(per, None), "refit": True}


def add_outputs(per: Normal, categories: list[str], output: AnomalyOutput) -> None:
    """Add a batch's scores, map maxima and lowest map value to ``per``, by category."""
    for i, category in enumerate(categories):
        mine = per.setdefault(category, {"scores": [], "map_max": [], "map_min": math.inf})
        mine["scores"].append(float(output.score[i]))
        mine["map_max"].append(float(output.anomaly_map[i].max()))
        mine["map_min"] = min(mine["map_min"], float(output.anomaly_map[i].min()))


def score_fold(model: AnomalyModule, held_out: Any, device: torch.device, per: Normal | None = None) -> Normal:
    """:func:`score_normal` of the fold ``held_out`` leaves out of training."""
    return score_normal(model, held_out.calibration_dataloader(), held_out.normal_train_dataloader(), device, per)


def score_normal(model: AnomalyModule, images: Iterable[Any], fitted: Iterable[Any], device: torch.device,
                 per: Normal | None = None) -> Normal:
    """Scores, map maxima and the lowest map value of ``model`` on the batches ``images``, per category, added
    to ``per`` (a new one by default); its per-pixel calibration, if any, fitted on ``fitted`` (the images it
    was trained on), then dropped."""
    model.to(device)
    if model.calibration is not None:
        model.fit_calibration(fitted)
    model.eval()
    per = {} if per is None else per
    with torch.inference_mode():
        for batch in images:
            add_outputs(per, batch["category"], model.evaluate_batch(move_data_to_device(batch, device)))
    if model.calibration is not None:
        model.calibration.clear()  # the test calibrates on all of the run's normal images, as a re-test does
    return per


def bare_trainer(cfg: DictConfig, device: torch.device) -> L.Trainer:
    """The run's trainer options on one ``device``, without callbacks, logger, checkpoints or progress bar."""
    accelerator = {"cuda": "gpu"}.get(device.type, device.type)
    devices = [device.index] if device.type == "cuda" and device.index is not None else 1
    return instantiate(cfg.trainer, callbacks=[], logger=False, enable_checkpointing=False, enable_progress_bar=False,
                       enable_model_summary=False, accelerator=accelerator, devices=devices, num_nodes=1,
                       strategy="auto")


def normal_statistics(per_category: Normal, global_step: int | None, stage: str = SOURCE,
                      false_positives: float = FALSE_POSITIVES) -> dict[str, Any]:
    """A threshold entry from normal images only (per category and ``pooled``): ``per_category`` maps a
    category to its images' ``scores``, ``map_max`` (each image's highest map value) and ``map_min``.

    Without anomalous images there is no F1 curve. The image threshold is the split-conformal quantile
    of ``n`` normal scores at ``false_positives`` = a: the ``ceil((n+1)(1-a))``-th smallest (the highest
    when ``n < 2/a - 1``), so an unseen normal image of the same distribution scores at or above it with
    probability at most a, whatever the scores' distribution; the pixel threshold is the same quantile
    of the map maxima (an unseen normal image gets any pixel outlined with probability at most a).
    ``false_positives=0``: the highest score and map value. The scores are kept (``scores``) for users
    who want another rate (``threshold=<score>``).
    """
    def quantile(values: list[float]) -> float:
        ordered = sorted(values)
        rank = len(ordered) if not false_positives else math.ceil((len(ordered) + 1) * (1 - false_positives))
        return ordered[min(len(ordered), rank) - 1]

    def entry(found: dict[str, Any]) -> dict[str, Any]:
        return {"image": quantile(found["scores"]), "pixel": quantile(found["map_max"]),
                "score_min": min(found["scores"]), "score_max": max(found["scores"]), "map_min": found["map_min"],
                "map_max": max(found["map_max"]), "images": len(found["scores"]), "scores": sorted(found["scores"])}

    pooled = {"scores": [s for f in per_category.values() for s in f["scores"]],
              "map_max": [m for f in per_category.values() for m in f["map_max"]],
              "map_min": min(f["map_min"] for f in per_category.values())}
    groups = {c: entry(found) for c, found in {**per_category, "pooled": pooled}.items()}
    return {"stage": stage, "global_step": global_step, "false_positives": false_positives, "groups": groups}


def record_folds(data: Any, folds: int, output_dir: Path) -> None:
    """Add ``data``'s first ``folds`` calibration folds to ``<run>/calibration_split.json`` (by category)."""
    path = output_dir / LISTING
    fold = data.calibration_listing(folds)
    mine = {entry["category"] for entry in fold}
    earlier = json.loads(path.read_text()) if path.is_file() else []
    atomic_write_json(path, [e for e in earlier if e.get("category") not in mine] + fold)


def add_to_checkpoints(checkpoint_dir: Path, global_step: int, entry: dict[str, Any]) -> None:
    """Write ``entry`` into the checkpoints of ``checkpoint_dir`` saved at ``global_step`` (at train time: the
    weights it was computed with were saved before it could be)."""
    for path in sorted(checkpoint_dir.glob("*.ckpt")):
        payload = torch.load(path, map_location="cpu", weights_only=True)
        if int(payload.get("global_step", -1)) != global_step:
            continue
        payload["anomaly_thresholds"] = {**(payload.get("anomaly_thresholds") or {}), SOURCE: entry}
        atomic_save(path, lambda handle, data=payload: torch.save(data, handle))


class _same_random_state:
    """Restore Python's, NumPy's and torch's random states on exit."""

    def __enter__(self) -> None:
        self.states = _collect_rng_states(include_cuda=torch.cuda.is_available())

    def __exit__(self, *exc: object) -> None:
        _set_rng_states(self.states)
