"""CurveMetric: the torchmetrics state (exact lists or a binned histogram) behind every metric."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import rank_zero_warn

from anomaly.metrics.binned import add_to_histogram, empty_histogram, merge_stacked
from anomaly.metrics.checks import MetricInputError
from anomaly.metrics.evaluation import Evaluation, evaluate
from anomaly.metrics.names import DEFAULT_BINS, DEFAULT_TOLERANCE, MODES, Mode
from anomaly.metrics.store import KeyPages


class CurveMetric(Metric):
    """Scores and ground truth of one level (image or pixel), kept exactly or binned.

    ``exact`` keeps every sample as one int64 key (:mod:`anomaly.metrics.keys`: the float32 score and
    a payload: 0 for normal, else the image label 1 or the size of the pixel's ground-truth region),
    8 bytes per sample in 64 MiB pages (:mod:`anomaly.metrics.store`), gathered across DDP processes
    with ``dist_reduce_fx="cat"``. ``binned`` keeps one histogram of ``bins`` bins
    (see :mod:`anomaly.metrics.binned`), merged across processes.

    Args:
        metrics: which metrics of this level to compute (all by default).
        mode: ``"exact"`` or ``"binned"``.
        bins: number of bins in binned mode.
        tolerance: warn when a binned metric's certified error bound exceeds this.
        **kwargs: passed to ``torchmetrics.Metric`` (e.g. ``sync_on_compute``).
    """

    full_state_update: ClassVar[bool] = False
    is_differentiable: ClassVar[bool] = False
    higher_is_better: ClassVar[bool] = True
    level: ClassVar[str] = ""
    available: ClassVar[tuple[str, ...]] = ()
    _state_dtypes: ClassVar[dict[str, torch.dtype]] = {
        "keys": torch.int64, "hist": torch.float64, "regions": torch.int64,
        "positives": torch.int64,
    }

    def __init__(
        self,
        metrics: Sequence[str] | None = None,
        mode: Mode = "exact",
        bins: int = DEFAULT_BINS,
        tolerance: float = DEFAULT_TOLERANCE,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        metrics = self.available if metrics is None else tuple(metrics)
        unknown = [m for m in metrics if m not in self.available]
        if unknown or not metrics:
            raise MetricInputError(f"{type(self).__name__} computes {self.available}, not {unknown or 'nothing'}")
        if mode not in MODES:
            raise MetricInputError(f"mode must be one of {MODES}, got {mode!r}")
        self.metrics = tuple(m for m in self.available if m in metrics)
        self.mode, self.bins, self.tolerance = mode, int(bins), tolerance
        self.last_evaluation: Evaluation | None = None
        if mode == "exact":
            self._pages = KeyPages()
            self.add_state("keys", default=[], dist_reduce_fx="cat")
            self.add_state("positives", default=torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")
            self.keys.append(_no_keys())
        else:
            self.add_state("hist", default=empty_histogram(self.bins), dist_reduce_fx=merge_stacked)
        if self.level == "pixel":
            self.add_state("regions", default=torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")

    def _store(self, scores: Tensor, payload: Tensor, positives: int, regions: int = 0) -> None:
        """Keep finite float32 scores (no -0.0) with integer-valued payloads; ``positives`` counts payloads > 0."""
        if self.mode == "exact":
            self._pages.append(self.keys, scores.reshape(-1), payload.reshape(-1))
            self.positives += positives
        else:
            self.hist = add_to_histogram(self.hist, scores.reshape(-1), payload.reshape(-1),
                                         with_pro=self.level == "pixel")
        if self.level == "pixel":
            self.regions += regions

    def reset(self) -> None:
        """Forget every sample."""
        super().reset()
        if self.mode == "exact":
            self._pages.forget()
            self.keys.append(_no_keys())

    def key_count(self) -> int:
        """Number of samples in the exact state."""
        return self.keys.numel() if isinstance(self.keys, Tensor) else sum(k.numel() for k in self.keys)

    def sorted_keys(self) -> np.ndarray:
        """The exact state's keys, sorted ascending (in place when the state is local and on the CPU)."""
        return self._pages.sorted_keys(self.keys)

    def evaluation(self) -> Evaluation:
        """Values, reasons for undefined values, and binned error bounds of the current state."""
        result = evaluate([self])
        self.last_evaluation = result
        warn_about(result, type(self).__name__, self.tolerance)
        return result

    def compute(self) -> dict[str, Tensor]:
        """The requested metrics as float64 scalars (NaN where undefined, with a warning saying why)."""
        return {name: torch.tensor(value, dtype=torch.float64) for name, value in self.evaluation().values.items()}

    def _apply(self, fn: Callable[[Tensor], Tensor], *args: Any, **kwargs: Any) -> CurveMetric:
        """Move states between devices but keep their dtypes (``.to(torch.float16)`` must not round scores)."""
        this = super()._apply(fn, *args, **kwargs)
        for name, dtype in self._state_dtypes.items():
            if name in this._defaults:
                this._defaults[name] = _retype(this._defaults[name], dtype)
                setattr(this, name, _retype(getattr(this, name), dtype))
        this._dtype = torch.float32
        return this


def warn_about(result: Evaluation, owner: str, tolerance: float) -> None:
    """Warn (on rank zero) about undefined values and binned errors above ``tolerance``."""
    for name, reason in result.reasons.items():
        rank_zero_warn(f"{owner}: {name} is undefined: {reason}.", UserWarning)
    for name, bound in result.bounds.items():
        if bound > tolerance and not math.isnan(result.values.get(name, math.nan)):
            rank_zero_warn(
                f"{owner}: binned {name} may be off by up to {bound:.2g} (> {tolerance:g}): scores are too "
                "concentrated for the bins; use more bins or mode='exact'.", UserWarning
            )


def _no_keys() -> Tensor:
    """An empty key tensor: keeps the list state non-empty, so a DDP process that saw no sample
    still gathers int64 (torchmetrics would substitute an empty float32 tensor for an empty list)."""
    return torch.empty(0, dtype=torch.int64)


def _retype(value: Tensor | list[Tensor], dtype: torch.dtype) -> Tensor | list[Tensor]:
    if isinstance(value, Tensor):
        return value if value.dtype == dtype else value.to(dtype)
    return [v if v.dtype == dtype else v.to(dtype) for v in value]
