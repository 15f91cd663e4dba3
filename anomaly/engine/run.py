"""The engine under every entry point: fit/validate/test per unit, re-test checkpoints, aggregate."""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from anomaly.callbacks.ddp_strategy import end_job_processes
from anomaly.callbacks.heatmaps import HeatmapWriter
from anomaly.config.check import check_targets, to_plain
from anomaly.engine import feasibility
from anomaly.engine.build import (
    build_callbacks,
    build_datamodule,
    build_loggers,
    build_model,
    build_trainer,
    finish_loggers,
    for_unit,
)
from anomaly.engine.calibration import fit_calibrated
from anomaly.engine.checkpoints import (
    CheckpointError,
    check_method,
    find_checkpoints,
    is_shape_mismatch,
    load_method,
    method_of,
    mismatch,
    read_checkpoint,
    resolve_resume,
)
from anomaly.engine.console import header, quiet_lightning
from anomaly.engine.lock import holding
from anomaly.engine.manifest import Manifest, data_record, earlier_sessions, mark_failed
from anomaly.engine.media import log_results
from anomaly.engine.results import print_table, write_curves, write_metrics
from anomaly.engine.resume import check_same_run, finished_metrics
from anomaly.metrics import MEAN, POOLED, mean_over_categories
from anomaly.models.base import AnomalyModule
from anomaly.utils.atomic import atomic_write_json

Results = dict[str, dict[str, float | None]]


class Aggregate:
    """Per-category results gathered over units (one model per category, or one for all), with the
    mean over categories (``anomaly.metrics.mean_over_categories``) and, for one unified model, pooled."""

    def __init__(self) -> None:
        self.per_category: Results = {}
        self.pooled: dict[str, float | None] = {}
        self.units = 0

    def add(self, results: Results) -> None:
        self.units += 1
        self.pooled = dict(results.get(POOLED) or {}) if self.units == 1 else {}
        self.per_category.update({k: v for k, v in results.items() if k not in (MEAN, POOLED)})

    def summary(self) -> Results:
        out: Results = {MEAN: mean_over_categories(self.per_category)[0]} if self.per_category else {}
        if self.pooled and len(self.per_category) > 1:
            out[POOLED] = self.pooled
        return out

    def flat(self, stage: str) -> dict[str, float | None]:
        """``<stage>/<group>/<metric>`` → value, the form sweeps optimise."""
        return {f"{stage}/{group}/{name}": value for group, values in {**self.per_category, **self.summary()}.items()
                for name, value in values.items()}


def fit(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """Fit, select (on validation) and test the configured model on the configured data.

    The run folder is locked for the run (a second training into it stops, ``lock.RunLockedError``); a
    run that raises (Ctrl+C included) is marked ``failed`` with the error in its ``manifest.json``.
    Returns ``(metrics, objects)``: metrics map ``val/...`` and ``test/<category|mean>/<metric>`` to
    floats (``cfg.optimized_metric`` is one of them); objects hold the last model, trainer, data.
    """
    output_dir = Path(cfg.paths.output_dir)
    with holding(output_dir):
        try:
            return _fit_run(cfg)
        except BaseException as error:
            mark_failed(output_dir, error)
            raise


def _fit_run(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """``fit`` in its locked folder."""
    check_targets(cfg)
    quiet_lightning()
    if cfg.get("ckpt_path") not in (None, "last"):
        check_method(resolve_resume(cfg.ckpt_path, Path()), cfg.model._target_)
    config = to_plain(cfg)
    output_dir = Path(cfg.paths.output_dir)
    if cfg.get("resume"):
        finished = finished_metrics(output_dir, config)
        if finished is not None:
            print(f"resume=true: {output_dir} has finished (metrics.json); skipped.")
            return finished, {}
    L.seed_everything(cfg.seed, workers=True)
    manifest = Manifest(output_dir, config, *_job())
    if cfg.get("ckpt_path") == "last":  # resumed in its folder: the same run (refused if not), its sessions kept
        check_same_run(output_dir, config)
        manifest.data.update(earlier=earlier_sessions(output_dir))
    feasibility.check(cfg)  # before anything large is built: a GPU asked for, memory, pretrained weights
    first_model = build_model(cfg)  # model options fail here, before any data is read
    datamodule = build_datamodule(cfg)
    categories = datamodule.categories
    header(cfg, datamodule.setting, categories, output_dir)
    manifest.update(data={**data_record(datamodule), "split_files": _record_splits(datamodule, output_dir)})
    units = [""] if datamodule.setting == "unified" or len(categories) == 1 else list(categories)
    validation, testing = Aggregate(), Aggregate()
    timing: dict[str, dict[str, float]] = {}
    model = trainer = None
    selected: list[str] = []
    curves: dict[str, Any] = {}
    loggers: list[Any] = []
    for unit in units:
        unit_cfg = for_unit(cfg, unit)
        unit_data = datamodule.for_category(unit) if unit else datamodule
        L.seed_everything(cfg.seed, workers=True)
        model, first_model = first_model or build_model(cfg), None
        checkpoint_dir = _checkpoint_dir(unit_cfg, output_dir, unit)
        resume = resolve_resume(cfg.get("ckpt_path"), checkpoint_dir)
        if resume:
            check_method(resume, cfg.model._target_)
        loggers = build_loggers(unit_cfg, config)
        trainer = build_trainer(unit_cfg, build_callbacks(unit_cfg, config), loggers)
        start = time.perf_counter()
        fit_calibrated(unit_cfg, trainer, model, unit_data, resume, _fit, output_dir, checkpoint_dir)
        timing[unit or "all"] = {"fit_s": round(time.perf_counter() - start, 3)}
        best = _best(trainer)
        if best:
            selected.append(best)
        if unit_data.val != "none" and hasattr(model, "results"):
            trainer.validate(model, datamodule=unit_data, ckpt_path=best, verbose=False, weights_only=True)
            validation.add(model.results["val"])
        if cfg.get("test", True) and hasattr(model, "results"):
            start = time.perf_counter()
            trainer.test(model, datamodule=unit_data, ckpt_path=best, verbose=False, weights_only=True)
            timing[unit or "all"]["test_s"] = round(time.perf_counter() - start, 3)
            testing.add(model.results["test"])
            unit_curves = _test_curves(model)
            curves.update(unit_curves)
            log_results(loggers, model.results["test"], unit_curves)
        if unit != units[-1]:
            finish_loggers(loggers)
    if len(units) > 1 and testing.per_category:  # the last unit's logger also gets every category and the mean
        log_results(loggers, {**testing.per_category, **testing.summary()}, {}, key="test/all_categories")
    finish_loggers(loggers)
    if testing.per_category and (trainer is None or trainer.is_global_zero):
        write_curves(output_dir / "curves.json", curves)
        write_metrics(output_dir / "metrics.json", {
            "method": cfg.model._target_, "setting": datamodule.setting, "seed": cfg.seed,
            "selected_on": "validation (best.ckpt)" if selected else "last epoch (no checkpoint ranked on validation)",
            "categories": testing.per_category, **testing.summary(),
            "validation": {"categories": validation.per_category, **validation.summary()},
            "timing": timing, "config": config,
        })
        print_table(testing.per_category, testing.summary(),
                    title=f"{cfg.model._target_.rsplit('.', 1)[-1]} — test — {output_dir}")
    manifest.finish(timing, trainer)
    end_job_processes()
    metrics = {**validation.flat("val"), **testing.flat("test")}
    return metrics, {"model": model, "trainer": trainer, "datamodule": datamodule}


def _fit(trainer: L.Trainer, model: L.LightningModule, data: L.LightningDataModule, resume: str | None) -> None:
    try:
        trainer.fit(model, datamodule=data, ckpt_path=resume, weights_only=True)
    except RuntimeError as error:
        if resume and is_shape_mismatch(error):
            raise CheckpointError(
                f"ckpt_path={resume} holds a {type(model).__name__} of other shapes than this run's model options "
                f"({mismatch(error)}); resume with the options it was trained with."
            ) from error
        raise


def _best(trainer: L.Trainer) -> str | None:
    """The checkpoint ranked best on validation, if one was saved (the checkpoint callback with a monitor)."""
    ranked = [c for c in trainer.checkpoint_callbacks if getattr(c, "monitor", None)]
    path = getattr(ranked[0], "best_model_path", "") if ranked else ""
    return path or None


def _checkpoint_dir(cfg: DictConfig, output_dir: Path, unit: str) -> Path:
    node = (cfg.get("callbacks") or {}).get("model_checkpoint")
    return Path(node.dirpath) if node and node.get("dirpath") else output_dir / "checkpoints" / unit


def _record_splits(datamodule: Any, output_dir: Path) -> list[str]:
    """Layouts without an official split (MTD), validation splits and few-shot anomalies record which images they used;
    returns the names of the files written."""
    written = []
    if hasattr(datamodule.layout, "split_listing"):
        atomic_write_json(output_dir / "split.json", datamodule.layout.split_listing(datamodule.root))
        written.append("split.json")
    listing = datamodule.validation_listing() if hasattr(datamodule, "validation_listing") else []
    if listing:
        atomic_write_json(output_dir / "val_split.json", listing)
        written.append("val_split.json")
    few_shot = datamodule.few_shot_listing() if hasattr(datamodule, "few_shot_listing") else []
    if few_shot:  # real test anomalies moved into training (data.few_shot_anomalies)
        atomic_write_json(output_dir / "few_shot.json", few_shot)
        written.append("few_shot.json")
    return written


def _test_curves(model: Any) -> dict[str, Any]:
    """The ROC/PRO points of the last test epoch per category (and pooled over several), as the metrics
    kept them (``anomaly.metrics.points``: bounded in size)."""
    evaluator = getattr(model, "evaluators", {}).get("test")
    categories = list(getattr(model, "categories", []))
    return {group: points for group, points in getattr(evaluator, "curves", {}).items()
            if points and (group in categories or (group == POOLED and len(categories) > 1))}


def _job() -> tuple[list[str], dict[str, Any] | None, dict[str, Any]]:
    """This job's command-line overrides, in a sweep its folder and number, and the chosen config options."""
    try:
        hydra = HydraConfig.get()
    except ValueError:
        return [], None, {}
    sweep = None
    if hydra.mode == RunMode.MULTIRUN:
        sweep = {"dir": str(hydra.sweep.dir), "job": int(hydra.job.num)}
    choices = {str(k): v for k, v in hydra.runtime.choices.items() if not str(k).startswith("hydra")}
    return list(hydra.overrides.task), sweep, choices


def retest(cfg: DictConfig) -> Results:
    """Re-test every checkpoint under ``cfg.ckpt_path`` (``Method.load_from_checkpoint``), on the data of its
    run with the command line's ``data.*`` overrides; returns per-category results and the summary."""
    quiet_lightning()
    output_dir = Path(cfg.paths.output_dir)
    testing = Aggregate()
    checkpoints = selected_checkpoints(cfg.ckpt_path)
    data_overrides = _overrides("data")
    for path in checkpoints:
        payload = read_checkpoint(path)
        if "anomaly_config" not in payload:
            raise CheckpointError(f"ckpt_path={path} was not written by anomaly.train (no run config inside); "
                                  "re-train with python -m anomaly.train.")
        run = OmegaConf.create(payload["anomaly_config"])
        data_cfg = OmegaConf.merge(run.data, OmegaConf.from_dotlist(data_overrides))
        if not any(o.startswith("category=") for o in data_overrides):
            data_cfg.category = payload.get("anomaly_categories") or data_cfg.category
        if not issubclass(method_of(payload, path), AnomalyModule):
            raise CheckpointError(f"ckpt_path={path} holds {payload.get('anomaly_method')}, which is not an anomaly "
                                  "detection method and cannot be re-tested.")
        L.seed_everything(cfg.seed, workers=True)
        model = load_method(path, evaluator=to_plain(cfg.evaluator))
        datamodule = instantiate(data_cfg, synthesis=None)
        heatmaps = HeatmapWriter(n_images=int(cfg.get("heatmaps", 8)), dirpath=output_dir / "images")
        trainer = build_trainer(cfg, [heatmaps], build_loggers(cfg))
        header(OmegaConf.create({"model": run.model, "data": data_cfg}), datamodule.setting, datamodule.categories,
               output_dir)
        trainer.test(model, datamodule=datamodule, verbose=False)
        testing.add(model.results["test"])
    write_metrics(output_dir / "metrics.json", {"checkpoints": [str(p) for p in checkpoints],
                                                "categories": testing.per_category, **testing.summary(),
                                                "config": to_plain(cfg)})
    print_table(testing.per_category, testing.summary(), title=f"evaluate — {cfg.ckpt_path}")
    return {**testing.per_category, **testing.summary()}


def selected_checkpoints(path: str | Path) -> list[Path]:
    """A checkpoint file, or per unit folder of a run the checkpoint its test used: ``best.ckpt`` where
    validation ranked one, else ``last.ckpt``."""
    found = find_checkpoints(path)
    return [p.parent / "best.ckpt" if p.name == "last.ckpt" and (p.parent / "best.ckpt").is_file() else p
            for p in found]


def _overrides(group: str) -> list[str]:
    """The command line's ``<group>.key=value`` overrides, without the group prefix."""
    try:
        task: Iterable[str] = HydraConfig.get().overrides.task
    except ValueError:
        return []
    prefix = f"{group}."
    return [o.lstrip("+")[len(prefix):] for o in task if o.lstrip("+").startswith(prefix)]
