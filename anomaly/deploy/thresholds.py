"""Decision thresholds and min-max normalisation statistics, kept beside the model (never in its graph).

Each checkpoint records, per evaluation stage (``val``, ``test``) and per category (plus ``pooled``),
the F1-optimal image and pixel thresholds (``AnomalyMetrics.thresholds``: the argmax of the F1 curve
the metrics already build) and the range of its scores and maps (``AnomalyModule.thresholds``).

Without a validation split (PaDiM's ``data.val=none``) there are no anomalies to build an F1 curve
on: the ``holdout`` source (``anomaly.engine.calibration``, at train time) scores a held-out fold of
normal training images with a model that did not fit them, and its threshold is their highest score
(``anomaly.engine.calibration.normal_statistics``). The ``train`` source does the same on the images the model fitted — in
sample, so far below what unseen normal images score for a model that fits its training set
(PaDiM: ~8 against 160–340); it is only used when asked for.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from anomaly.config.check import ConfigError

SOURCES = ("val", "holdout", "test", "train")
POOLED = "pooled"


@dataclass(frozen=True)
class Thresholds:
    """One model's decision rule: ``score >= image`` is anomalous, map pixels ``>= pixel`` are outlined.

    Normalised scores follow anomalib's min-max normalisation: ``clip((s - image) / (score_max -
    score_min) + 0.5, 0, 1)``, so the threshold maps to 0.5 and decisions read the same either way.

    Attributes:
        image, pixel: thresholds on the raw score and raw map (``pixel`` may be ``None``: no pixel metric).
        score_min, score_max, map_min, map_max: the ranges seen on the source split.
        source: ``val``, ``holdout``, ``test``, ``train`` or ``override`` (a command-line value), recorded
            in outputs.
        group: the category whose statistics these are, or ``pooled``.
    """

    image: float
    pixel: float | None
    score_min: float
    score_max: float
    map_min: float
    map_max: float
    source: str
    group: str = POOLED

    def normalise(self, score: np.ndarray | float) -> np.ndarray:
        """Scores mapped to [0, 1] with the threshold at 0.5."""
        spread = max(self.score_max - self.score_min, 1e-12)
        return np.clip((np.asarray(score, dtype=np.float64) - self.image) / spread + 0.5, 0.0, 1.0)

    def decide(self, score: np.ndarray | float) -> np.ndarray:
        """``True`` where a score is anomalous."""
        return np.asarray(score) >= self.image

    def with_overrides(self, image: float | None = None, pixel: float | None = None) -> Thresholds:
        """A copy with the user's thresholds (raw score / map units), recorded as ``override``."""
        if image is None and pixel is None:
            return self
        return replace(self, image=float(image) if image is not None else self.image,
                       pixel=float(pixel) if pixel is not None else self.pixel, source="override")

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON beside exported models)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Thresholds:
        """The inverse of :meth:`to_dict`."""
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


def stored(payload: Mapping[str, Any], source: str) -> dict[str, Any] | None:
    """The thresholds of ``source`` a checkpoint holds, if they are of its own weights (same step)."""
    entry = (payload.get("anomaly_thresholds") or {}).get(source)
    if not entry or not entry.get("groups"):
        return None
    step = payload.get("global_step")
    if source != "train" and step is not None and entry.get("global_step") not in (None, -1, step):
        return None  # computed at another training step than these weights (a stale last.ckpt)
    return dict(entry)


def pick(entry: Mapping[str, Any], source: str, category: str | None, where: str) -> Thresholds:
    """The thresholds of ``category`` (its own group, else ``pooled``) from a stored ``entry``."""
    groups = entry["groups"]
    group = category if category in groups else POOLED if POOLED in groups else next(iter(groups))
    values = groups[group]
    if values.get("image") is None:
        raise ConfigError(
            f"{where} has no {source} image threshold for {group} (its {source} split had no anomalous or no "
            "normal image); pass threshold=<score> or another threshold_source."
        )
    return Thresholds(image=float(values["image"]), pixel=_maybe(values.get("pixel")),
                      score_min=float(values["score_min"]), score_max=float(values["score_max"]),
                      map_min=float(values["map_min"]), map_max=float(values["map_max"]), source=source, group=group)


def _maybe(value: Any) -> float | None:
    return None if value is None or not math.isfinite(float(value)) else float(value)
