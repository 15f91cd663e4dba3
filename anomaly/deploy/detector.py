"""The embedding API: ``load(path)`` → a :class:`Detector` that maps images to map, score and decision."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from anomaly.config.check import ConfigError
from anomaly.config.targets import check_data
from anomaly.deploy.preprocess import Preprocess
from anomaly.deploy.runtimes import FORMATS, Runtime, TorchRuntime, exported_runtime
from anomaly.deploy.sources import ensure_thresholds, resolve_source, run_datamodule
from anomaly.deploy.thresholds import SOURCES, Thresholds, pick, stored
from anomaly.engine.checkpoints import CheckpointError, load_method, method_of, read_checkpoint
from anomaly.engine.run import selected_checkpoints
from anomaly.models.base import AnomalyModule

EXPORTED_SUFFIXES = tuple(suffix for suffix, _ in FORMATS.values())


@dataclass
class Result:
    """One image's answer.

    Attributes:
        anomaly_map: float32 h×w at the model's input size (raw units; higher = more anomalous).
        score: the raw image score; normalised: in [0, 1], 0.5 at the threshold.
        anomalous: ``score >= thresholds.image``.
        region: bool h×w, ``anomaly_map >= thresholds.pixel`` (all False without a pixel threshold).
        image: the uint8 RGB image the model saw (after resize/crop).
    """

    anomaly_map: np.ndarray
    score: float
    normalised: float
    anomalous: bool
    region: np.ndarray
    image: np.ndarray

    @property
    def decision(self) -> str:
        """``"anomalous"`` or ``"normal"``."""
        return "anomalous" if self.anomalous else "normal"


class Detector:
    """A trained model with its checkpoint's preprocessing and thresholds, ready for new images.

    Example:
        >>> detector = load("outputs/runs/.../checkpoints/best.ckpt")  # doctest: +SKIP
        >>> result = detector("part.png")                               # doctest: +SKIP
        >>> result.score, result.decision                                # doctest: +SKIP
    """

    def __init__(self, runtime: Runtime, preprocess: Preprocess, thresholds: Thresholds, category: str,
                 method: str, path: Path) -> None:
        self.runtime, self.preprocess, self.thresholds = runtime, preprocess, thresholds
        self.category, self.method, self.path = category, method, path

    def with_thresholds(self, threshold: float | None, pixel: float | None = None) -> Detector:
        """This detector with the user's thresholds (``None`` keeps the stored one)."""
        self.thresholds = self.thresholds.with_overrides(threshold, pixel)
        return self

    def __call__(self, image: np.ndarray | str | Path) -> Result:
        """One image (a path, or a uint8 RGB/grayscale array of any size)."""
        return self.predict([self.preprocess.rgb(image)])[0]

    def predict(self, rgb_images: Sequence[np.ndarray]) -> list[Result]:
        """Already resized uint8 RGB images (``preprocess.rgb``) in one batch."""
        batch = np.stack([self.preprocess.normalise(rgb) for rgb in rgb_images]).astype(np.float32)
        maps, scores = self.runtime(batch, [self.category] * len(rgb_images))
        normalised = self.thresholds.normalise(scores)
        pixel = self.thresholds.pixel
        return [Result(anomaly_map=maps[i, 0].astype(np.float32), score=float(scores[i]), normalised=float(normalised[i]),
                       anomalous=bool(self.thresholds.decide(scores[i])),
                       region=maps[i, 0] >= pixel if pixel is not None else np.zeros(maps.shape[2:], bool),
                       image=rgb_images[i]) for i in range(len(rgb_images))]


def load(path: str | Path, category: str | None = None, threshold: float | None = None,
         pixel_threshold: float | None = None, threshold_source: str = "auto", runtime: str | None = None,
         threads: int | None = None) -> Detector:
    """A :class:`Detector` from a checkpoint, a run folder (its best/last checkpoint, by ``category`` in
    the ``separate`` setting) or an exported model (``.onnx``, ``.xml``, ``.pt`` with its ``.json``).

    Args:
        category: the category of the images (chooses the checkpoint of a ``separate`` run and the
            per-category thresholds of a ``unified`` one).
        threshold, pixel_threshold: override the stored thresholds (raw score / map units).
        threshold_source: ``auto`` (validation if the run validated, else ``holdout``: normal training
            images the model did not fit), ``val``, ``holdout``, ``test`` or ``train`` (in sample); missing
            ones are computed on the run's data and kept beside the checkpoint (``anomaly.deploy.sources``).
        runtime: ``openvino`` runs an ``.onnx`` file in OpenVINO instead of ONNX Runtime.
        threads: intra-op threads of ONNX Runtime / OpenVINO (default: theirs).
    """
    path = Path(path).expanduser()
    if threshold_source not in ("auto", *SOURCES):
        raise ConfigError(f"threshold_source={threshold_source} is not one of auto, {', '.join(SOURCES)}.")
    if path.suffix.lower() in EXPORTED_SUFFIXES and path.is_file():
        return _load_exported(path, category, runtime, threads).with_thresholds(threshold, pixel_threshold)
    checkpoint = choose_checkpoint(path, category)
    payload = read_run_checkpoint(checkpoint)
    model = load_method(checkpoint)
    if model.calibration is not None:  # model.calibrate=true: per-pixel statistics of the run's normal images
        model.fit_calibration(run_datamodule(payload, checkpoint).normal_train_dataloader())
    categories = list(payload.get("anomaly_categories") or [])
    if category is not None and categories and category not in categories:
        raise ConfigError(f"category={category} is not a category of ckpt_path={checkpoint} "
                          f"({', '.join(categories)}); pass one of them.")
    category = category or (categories[0] if len(categories) == 1 else None)
    source = resolve_source(payload, threshold_source, checkpoint)
    entry = stored(payload, source)
    if entry is None and threshold is not None:  # the user's threshold needs no data to be read
        thresholds = _override_only(threshold, pixel_threshold)
    else:
        entry = entry or ensure_thresholds(checkpoint, payload, model, source)
        thresholds = pick(entry, source, category, f"ckpt_path={checkpoint}")
    detector = Detector(TorchRuntime(model), Preprocess.from_data_config(payload["anomaly_config"]["data"]),
                        thresholds, category or "", str(payload["anomaly_method"]), checkpoint)
    return detector.with_thresholds(threshold, pixel_threshold)


def read_run_checkpoint(checkpoint: Path) -> dict[str, Any]:
    """The contents of a checkpoint of a training run of this project (its method and run config
    inside), or one sentence saying it is not one."""
    payload = read_checkpoint(checkpoint)
    if not issubclass(method_of(payload, checkpoint), AnomalyModule) or "anomaly_config" not in payload:
        raise CheckpointError(f"ckpt_path={checkpoint} was not written by anomaly.train (no anomaly method or run "
                              "config inside); give a checkpoint of a training run of this project.")
    return payload


def _override_only(threshold: float, pixel: float | None) -> Thresholds:
    """Thresholds given on the command line without stored statistics (normalisation spans ±threshold)."""
    return Thresholds(image=threshold, pixel=pixel, score_min=0.0, score_max=2 * abs(threshold) or 1.0,
                      map_min=0.0, map_max=2 * abs(pixel if pixel is not None else threshold) or 1.0,
                      source="override")


def choose_checkpoint(path: Path, category: str | None) -> Path:
    """The checkpoint of ``path`` (a file, or a run folder's best/last per unit) for ``category``."""
    found = selected_checkpoints(path)
    if len(found) == 1:
        return found[0]
    by_category: dict[str, Path] = {}
    for checkpoint in found:
        for name in read_checkpoint(checkpoint).get("anomaly_categories") or []:
            by_category.setdefault(str(name), checkpoint)
    if category in by_category:
        return by_category[category]
    raise ConfigError(f"ckpt_path={path} holds one model per category ({', '.join(sorted(by_category))}); pass "
                      "category=<name> (or give input images under a folder named after the category).")


def _load_exported(path: Path, category: str | None, runtime: str | None, threads: int | None) -> Detector:
    meta_path = metadata_path(path)
    if not meta_path.is_file():
        raise ConfigError(f"ckpt_path={path} has no {meta_path.name} beside it (preprocessing and thresholds); "
                          "export it with python -m anomaly.export.")
    meta = json.loads(meta_path.read_text())
    check_data(meta, f"ckpt_path={meta_path}")  # data: it may name no code off the allow-list
    thresholds = Thresholds.from_dict(meta["thresholds"])
    return Detector(exported_runtime(path, runtime, threads), Preprocess.from_data_config(meta["preprocess"]),
                    thresholds, category or meta.get("category", ""), meta.get("method", ""), path)


def metadata_path(model_file: Path) -> Path:
    """The JSON beside an exported model: ``last.onnx`` → ``last.onnx.json``."""
    return model_file.with_name(model_file.name + ".json")


def describe(detector: Detector) -> dict[str, Any]:
    """What a run used (printed and written beside scores.csv)."""
    return {"model": str(detector.path), "method": detector.method, "category": detector.category,
            "thresholds": detector.thresholds.to_dict(), "preprocess": detector.preprocess.to_dict()}
