"""AnomalyModule: turns a method's batch output into validation, test, metrics and checkpoints."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from contextlib import nullcontext
from pathlib import Path
from typing import Any, ClassVar

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import Tensor

from anomaly.config.targets import check_data
from anomaly.metrics import DEFAULT_BINS, METRIC_NAMES, AnomalyMetrics
from anomaly.models.guards import check_finite_loss
from anomaly.models.outputs import AnomalyOutput
from anomaly.nn.map_calibration import MapCalibration

STAGES = ("val", "test")


class NonFiniteOutputError(ValueError):
    """A method produced NaN or inf anomaly maps or scores."""


class UnfittedModelError(ValueError):
    """A model was asked to score images before it was trained."""


def plain(value: Any) -> Any:
    """OmegaConf containers (and nested ones) as plain dicts and lists: safe to store in checkpoints."""
    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def build_block(spec: Any) -> Any:
    """A block given as a config node with ``_target_`` (instantiated here) or as an object (as is).

    Methods take their blocks (backbones) as config nodes so the checkpoint's hyperparameters stay
    plain data that rebuild them (model YAMLs set ``_recursive_: false``).
    """
    if isinstance(spec, Mapping | DictConfig) and "_target_" in spec:
        return instantiate(spec)
    return spec


def merge(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``overrides`` merged in recursively (plain dicts)."""
    out = dict(base)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def _finite(value: float | None) -> float | None:
    """``value``, or ``None`` when missing or NaN (an undefined F1 curve)."""
    return None if value is None or not math.isfinite(value) else float(value)


class AnomalyModule(L.LightningModule):
    """Base of every method: validation/test/predict steps, per-category metrics, checkpoints.

    A method implements how it learns (``training_step``, ``configure_optimizers``) and how it
    scores a batch: ``score_batch(batch) -> AnomalyOutput`` (default: ``self(batch["image"])``,
    for methods whose pure ``forward(image) -> (map, score)`` needs nothing else of the batch).
    Everything downstream — metrics under ``val/...`` and ``test/...``, heatmaps, results,
    calibration — reads only that output.

    Every constructor argument (the method's and these) is saved as a hyperparameter, so
    ``Method.load_from_checkpoint(path)`` rebuilds the model; ``restore_overrides`` is merged into
    the saved arguments so the rebuild reads no pretrained file (the checkpoint holds every weight).

    Args:
        evaluator: ``metrics`` (names), ``mode`` (``exact``|``binned``), ``bins`` — the ``evaluator``
            config group.
        calibrate: z-score each map per pixel against the maps of the category's normal training
            images (fitted before every validation/test/predict epoch; not in any paper: it removes
            what a model gets wrong on every normal image, e.g. at the border).
    """

    #: Fitting is cheap statistics that a new fit replaces entirely (PaDiM). Without a validation split,
    #: ``anomaly.engine.calibration`` then sets the default thresholds on a copy fitted without a held-out
    #: fold of normal images and fits this model on all of them (the paper's protocol); other methods
    #: keep the fold out of their one fit.
    refit_after_calibration: ClassVar[bool] = False

    def cross_fit_outputs(self, data: Any, trainer: L.Trainer) -> Iterable[tuple[Mapping[str, Any], AnomalyOutput]] | None:
        """Each calibration fold's batches of ``data`` with their outputs under a fit without that fold (what
        ``anomaly.engine.calibration.cross_fit`` gets from a copy refitted per fold by ``trainer``), computed
        faster by the method; ``None`` (the default): refit copies."""
        return None

    def __init__(self, evaluator: Mapping[str, Any] | None = None, calibrate: bool = False) -> None:
        super().__init__()
        self.save_hyperparameters(logger=False)
        spec = dict(plain(evaluator) or {})
        self.metric_names = tuple(spec.get("metrics") or METRIC_NAMES)
        self.metrics_mode = str(spec.get("mode", "exact"))
        self.metrics_bins = int(spec.get("bins") or DEFAULT_BINS)
        self.calibration = MapCalibration("model.calibrate") if calibrate else None
        self._calibrated_at: int | None = None  # the training step whose weights the calibration fits
        self.evaluators: dict[str, AnomalyMetrics] = {}
        self.results: dict[str, dict[str, dict[str, float | None]]] = {}
        self.categories: list[str] = []
        # Per stage: the F1-optimal image/pixel thresholds and min-max statistics of its last epoch,
        # per category and pooled (plain data; saved in checkpoints, read by anomaly.deploy).
        self.thresholds: dict[str, dict[str, Any]] = {}
        self._ranges: dict[str, Tensor] = {}

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: Any, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        """Lightning's, once the file is checked to name no code off the allow-list (``anomaly.config.targets``;
        this class itself is trusted): its hyperparameters are built when the model is."""
        if isinstance(checkpoint_path, str | Path):
            try:
                payload = torch.load(checkpoint_path, map_location="cpu", weights_only=True, mmap=True)
            except Exception:  # noqa: BLE001 - not readable safely: Lightning's own load says why
                payload = None
            check_data(payload, f"ckpt_path={checkpoint_path}", (f"{cls.__module__}.{cls.__qualname__}",))
        return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)

    # -- the method's part ------------------------------------------------------------------------
    def score_batch(self, batch: Mapping[str, Any]) -> AnomalyOutput:
        """The method's output for a batch; override when scoring needs more than the images."""
        anomaly_map, score = self(batch["image"])
        return AnomalyOutput(anomaly_map, score)

    def finish_map(self, raw_map: Tensor) -> tuple[Tensor, Tensor]:
        """Turn a (calibrated) ``raw_map`` into ``(anomaly_map, score)``; default: as is, max score."""
        return raw_map, raw_map.flatten(1).amax(1)

    # -- evaluation -------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        """Take the categories of the attached data module."""
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if datamodule is not None and hasattr(datamodule, "categories"):
            self.categories = list(datamodule.categories)

    def evaluate_batch(self, batch: Mapping[str, Any]) -> AnomalyOutput:
        """``score_batch`` plus calibration, checked to be finite."""
        output = self.score_batch(batch)
        if self.calibration is not None:
            raw = output.raw_map if output.raw_map is not None else output.anomaly_map
            output = output.with_map(*self.finish_map(self.calibration(raw, list(batch["category"]))))
        if not (torch.isfinite(output.anomaly_map).all() and torch.isfinite(output.score).all()):
            raise NonFiniteOutputError(
                f"{type(self).__name__} produced NaN/inf anomaly scores for the batch starting with "
                f"{batch['path'][0]}; the model diverged or its statistics are degenerate — retrain it "
                "(lower model.lr or set trainer.gradient_clip_val=1.0)."
            )
        return output

    def _metrics(self, stage: str) -> AnomalyMetrics:
        if stage not in self.evaluators:
            if not self.categories:
                raise RuntimeError("AnomalyModule needs its categories: attach an AnomalyDataModule.")
            self.evaluators[stage] = AnomalyMetrics(
                categories=self.categories, metrics=self.metric_names, mode=self.metrics_mode, bins=self.metrics_bins
            ).to(self.device)
        return self.evaluators[stage]

    def _start_evaluation(self, stage: str) -> None:
        self._fit_calibration()
        self._metrics(stage).reset()
        self._ranges = {}

    def _evaluation_step(self, stage: str, batch: Mapping[str, Any]) -> AnomalyOutput:
        output = self.evaluate_batch(batch)
        self._metrics(stage).update(batch["category"], output.anomaly_map, output.score, batch["mask"], batch["label"])
        self._track_ranges(list(batch["category"]), output)
        return output

    def _track_ranges(self, categories: list[str], output: AnomalyOutput) -> None:
        """Running (-min score, max score, -min map, max map) per category, for min-max normalisation."""
        for category in set(categories):
            rows = [i for i, c in enumerate(categories) if c == category]
            score, maps = output.score[rows].detach().float(), output.anomaly_map[rows].detach().float()
            now = torch.stack([-score.min(), score.max(), -maps.min(), maps.max()])
            seen = self._ranges.get(category)
            self._ranges[category] = now if seen is None else torch.maximum(seen, now)

    def _record_thresholds(self, stage: str) -> None:
        """The stage's F1-optimal thresholds (``AnomalyMetrics.thresholds``) and score/map ranges."""
        ranges = torch.stack([self._ranges.get(c, torch.full((4,), -math.inf, device=self.device))
                              for c in self.categories]).to(self.device)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(ranges, op=torch.distributed.ReduceOp.MAX)
        per = {c: ranges[i].tolist() for i, c in enumerate(self.categories)}
        per["pooled"] = ranges.amax(0).tolist()
        groups = {}
        for group, found in self._metrics(stage).thresholds.items():
            if group not in per or not math.isfinite(per[group][1]):
                continue
            groups[group] = {"image": _finite(found.get("image_f1max")), "pixel": _finite(found.get("pixel_f1max")),
                             "score_min": -per[group][0], "score_max": per[group][1],
                             "map_min": -per[group][2], "map_max": per[group][3]}
        self.thresholds[stage] = {"stage": stage, "global_step": self._step(), "groups": groups}

    def _end_evaluation(self, stage: str) -> None:
        results = self._metrics(stage).compute()
        self.results[stage] = results
        self._record_thresholds(stage)
        for group, values in results.items():
            for name, value in values.items():
                if value is not None and not math.isnan(float(value)):
                    # Every process holds the same (already all-reduced) value.
                    self.log(f"{stage}/{group}/{name}", float(value), sync_dist=True)

    def on_validation_epoch_start(self) -> None:
        self._start_evaluation("val")

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> AnomalyOutput:
        return self._evaluation_step("val", batch)

    def on_validation_epoch_end(self) -> None:
        self._end_evaluation("val")

    def on_test_epoch_start(self) -> None:
        self._start_evaluation("test")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> AnomalyOutput:
        return self._evaluation_step("test", batch)

    def on_test_epoch_end(self) -> None:
        self._end_evaluation("test")

    @property
    def test_results(self) -> dict[str, dict[str, float | None]]:
        """The last test epoch's results (per category, mean, pooled)."""
        return self.results.get("test", {})

    def on_predict_epoch_start(self) -> None:
        self._fit_calibration()

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> AnomalyOutput:
        return self.evaluate_batch(batch)

    # -- calibration on normal training images ----------------------------------------------------
    def _fit_calibration(self) -> None:
        """Fit the calibration unless it already fits these categories at this training step (a
        validation during training refits it: the weights changed since the last one)."""
        if self.calibration is None or (
            self.calibration.covers(self.categories) and self._calibrated_at == self._step()
        ):
            return
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is None or not hasattr(datamodule, "normal_train_dataloader"):
            raise UnfittedModelError("model.calibrate=true needs a data module with training images to calibrate on.")
        # A fixed order and batch size: a re-test of the checkpoint calibrates on identical batches.
        self.fit_calibration(datamodule.normal_train_dataloader())

    @torch.no_grad()
    def fit_calibration(self, batches: Iterable[Mapping[str, Any]]) -> None:
        """Fit the calibration on normal images (their ``source`` under synthesis), in eval mode and under
        the trainer's precision as evaluation maps are."""
        assert self.calibration is not None
        training = self.training
        precision = self.trainer.precision_plugin if self._trainer is not None else None
        self.calibration.clear()
        self.eval()
        try:
            with precision.test_step_context() if precision is not None else nullcontext():
                for batch in batches:
                    image = batch.get("source")
                    image = (batch["image"] if image is None else image).to(self.device)
                    if precision is not None:
                        image = precision.convert_input(image)
                    output = self.score_batch({**batch, "image": image})
                    raw = output.raw_map if output.raw_map is not None else output.anomaly_map
                    self.calibration.add(list(batch["category"]), raw)
        finally:
            self.train(training)
        self.calibration.finish()
        self._calibrated_at = self._step()

    def _step(self) -> int:
        return int(self.trainer.global_step) if self._trainer is not None else -1

    def on_train_start(self) -> None:
        if self.calibration is not None:
            self.calibration.clear()  # the model changes: calibrate again before evaluating

    def load_state_dict(self, *args: Any, **kwargs: Any) -> Any:
        """Load weights; a calibration fitted on other weights is dropped (refitted before evaluating)."""
        if self.calibration is not None:
            self.calibration.clear()
        return super().load_state_dict(*args, **kwargs)

    # -- training ---------------------------------------------------------------------------------
    def on_before_backward(self, loss: Tensor) -> None:
        """The one non-finite-loss guard of every gradient method."""
        check_finite_loss(self, loss)

    # -- checkpoints ------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Plain hyperparameters that rebuild the model without pretrained files, plus the method and
        its categories, so a checkpoint re-tests on its own."""
        checkpoint["hyper_parameters"] = merge(plain(dict(self.hparams)), self.restore_overrides())
        checkpoint.pop("hparams_type", None)
        checkpoint["anomaly_method"] = f"{type(self).__module__}.{type(self).__qualname__}"
        checkpoint["anomaly_categories"] = list(self.categories)
        checkpoint["anomaly_thresholds"] = plain(self.thresholds)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.categories = list(checkpoint.get("anomaly_categories") or self.categories)
        self.thresholds = dict(checkpoint.get("anomaly_thresholds") or {})
        if self.calibration is not None:
            self.calibration.clear()

    def restore_overrides(self) -> dict[str, Any]:
        """Constructor arguments that rebuild this model without reading any pretrained file (e.g.
        ``{"backbone": {"weights": "none"}}``); merged into the checkpoint's hyperparameters."""
        return {}
