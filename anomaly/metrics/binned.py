"""Binned mode: a mergeable histogram on a dyadic grid, sized by its number of bins only.

Anomaly scores have no fixed range, so the bins are not configured: bin ``j`` of a histogram holds
the scores ``s`` with ``floor(s / 2**e) == origin + j``. The exponent ``e`` is the smallest one for
which every score seen so far fits into ``bins`` bins (never finer than float32 resolution), and
``origin`` is the bin of the smallest score. When a score outside the window arrives, ``e`` grows
and neighbouring bins merge exactly (``floor(floor(s / 2**e) / 2**k) == floor(s / 2**(e + k))``),
so the final histogram depends only on the data, never on the batch order, the batch split or
the number of DDP processes, and histograms of different categories or ranks merge exactly. The
bin width ends between ``(max - min) / bins`` and twice that.

Each bin keeps the count of negative and of positive samples, the summed region weights
``1 / |region|`` of its positive pixels (AUPRO), and the smallest and largest score in it. The
curve points at bin edges are therefore exact; a bin whose scores are all equal is an exact
threshold too. Only bins holding several distinct scores can make the result differ from exact
mode, and :mod:`anomaly.metrics.bounds` turns them into a certified worst-case error for each
metric, which the metrics report (and warn about when it exceeds the tolerance).

The state is one float64 tensor: a header ``[count, e, origin, min, max]`` followed by five arrays
of ``bins`` values (negatives, positives, region weights, bin minimum, bin maximum).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from anomaly.metrics.checks import MetricInputError

COUNT, EXPONENT, ORIGIN, LOW, HIGH = range(5)
HEADER = 5
NEG, POS, PRO, BIN_MIN, BIN_MAX = range(5)
FIELDS = 5


def empty_histogram(bins: int) -> Tensor:
    """A histogram without samples."""
    if bins < 4:
        raise MetricInputError(f"binned metrics need at least 4 bins, got {bins}")
    flat = torch.zeros(HEADER + FIELDS * bins, dtype=torch.float64)
    flat[LOW], flat[HIGH] = math.inf, -math.inf
    _field(flat, BIN_MIN).fill_(math.inf)
    _field(flat, BIN_MAX).fill_(-math.inf)
    return flat


def histogram_bins(flat: Tensor) -> int:
    """Number of bins of a histogram."""
    return (flat.numel() - HEADER) // FIELDS


def canonical_exponent(low: float, high: float, bins: int) -> int:
    """Smallest exponent ``e`` whose grid puts every score in ``[low, high]`` into ``bins`` bins.

    Never finer than the float32 spacing of the largest magnitude (finer bins would stay empty).
    """
    largest = max(abs(low), abs(high))
    exponent = math.frexp(largest)[1] - 24 if largest > 0 else -149
    if high > low:
        exponent = max(exponent, math.ceil(math.log2((high - low) / bins)) - 2)
    while math.floor(math.ldexp(high, -exponent)) - math.floor(math.ldexp(low, -exponent)) >= bins:
        exponent += 1
    return exponent


def add_to_histogram(flat: Tensor, scores: Tensor, payload: Tensor, with_pro: bool) -> Tensor:
    """Add samples to a histogram (in place when the grid does not change).

    Args:
        flat: the histogram.
        scores: finite float32 scores (1-D, on the histogram's device).
        payload: 0 for negatives, the region size (or 1) for positives, same length.
        with_pro: also accumulate the region weights ``1 / payload`` of positives.

    Returns:
        The updated histogram (a new tensor if the grid had to grow).
    """
    if scores.numel() == 0:
        return flat
    bins = histogram_bins(flat)
    low = min(float(scores.min()), float(flat[LOW]))
    high = max(float(scores.max()), float(flat[HIGH]))
    exponent = canonical_exponent(low, high, bins)
    origin = math.floor(math.ldexp(low, -exponent))
    if flat[COUNT] > 0 and (exponent != int(flat[EXPONENT]) or origin != int(flat[ORIGIN])):
        flat = _regrid(flat, exponent, origin)
    flat[COUNT] += scores.numel()
    flat[EXPONENT], flat[ORIGIN], flat[LOW], flat[HIGH] = exponent, origin, low, high
    values = scores.to(torch.float64)
    index = (torch.floor(values * math.ldexp(1.0, -exponent)) - origin).long()
    positive = payload > 0
    _field(flat, NEG).add_(torch.bincount(index[~positive], minlength=bins))
    _field(flat, POS).add_(torch.bincount(index[positive], minlength=bins))
    if with_pro:
        weights = 1.0 / payload[positive].to(torch.float64)
        _field(flat, PRO).add_(torch.bincount(index[positive], weights=weights, minlength=bins))
    _field(flat, BIN_MIN).scatter_reduce_(0, index, values, reduce="amin")
    _field(flat, BIN_MAX).scatter_reduce_(0, index, values, reduce="amax")
    return flat


def merge_histograms(flats: Sequence[Tensor]) -> Tensor:
    """One histogram holding the samples of all ``flats`` (any grids, same number of bins)."""
    filled = [f for f in flats if f[COUNT] > 0]
    if not filled:
        return flats[0].clone()
    bins = histogram_bins(filled[0])
    if any(histogram_bins(f) != bins for f in filled):
        raise ValueError("cannot merge histograms with different numbers of bins")
    low = min(float(f[LOW]) for f in filled)
    high = max(float(f[HIGH]) for f in filled)
    exponent = max([canonical_exponent(low, high, bins)] + [int(f[EXPONENT]) for f in filled])
    origin = math.floor(math.ldexp(low, -exponent))
    merged = _regrid(filled[0], exponent, origin)
    for other in filled[1:]:
        part = _regrid(other, exponent, origin)
        merged[COUNT] += part[COUNT]
        for field in (NEG, POS, PRO):
            _field(merged, field).add_(_field(part, field))
        torch.minimum(_field(merged, BIN_MIN), _field(part, BIN_MIN), out=_field(merged, BIN_MIN))
        torch.maximum(_field(merged, BIN_MAX), _field(part, BIN_MAX), out=_field(merged, BIN_MAX))
    merged[LOW], merged[HIGH] = low, high
    return merged


def merge_stacked(stacked: Tensor) -> Tensor:
    """DDP reduction: merge the histograms gathered from all processes (rows of ``stacked``)."""
    return merge_histograms(list(stacked))


@dataclass(frozen=True)
class HistogramCurve:
    """The occupied bins as threshold groups, highest bin first.

    Attributes:
        p: positives per bin (int64).
        q: negatives per bin (int64).
        w: region weights per bin (float64).
        tp: cumulative positives down to each bin's lower edge (int64).
        fp: cumulative negatives (int64).
        pro: cumulative region weights (float64).
        mixed: the bin holds more than one distinct score (its inside is not resolved).
        low: the smallest score in each bin (the threshold of its curve point).
    """

    p: np.ndarray
    q: np.ndarray
    w: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    pro: np.ndarray
    mixed: np.ndarray
    low: np.ndarray | None = None


def histogram_curve(flat: Tensor) -> HistogramCurve:
    """The threshold groups of a histogram."""
    flat = flat.detach().cpu()
    neg, pos = _field(flat, NEG), _field(flat, POS)
    occupied = torch.nonzero((neg + pos) > 0).reshape(-1).flip(0)
    p = pos[occupied].numpy().astype(np.int64)
    q = neg[occupied].numpy().astype(np.int64)
    w = _field(flat, PRO)[occupied].numpy()
    return HistogramCurve(
        p=p, q=q, w=w, tp=np.cumsum(p), fp=np.cumsum(q), pro=np.cumsum(w),
        mixed=(_field(flat, BIN_MIN)[occupied] < _field(flat, BIN_MAX)[occupied]).numpy(),
        low=_field(flat, BIN_MIN)[occupied].numpy(),
    )


def histogram_counts(flat: Tensor) -> tuple[int, int]:
    """(positives, negatives) in a histogram."""
    return int(_field(flat, POS).sum()), int(_field(flat, NEG).sum())


def _field(flat: Tensor, field: int) -> Tensor:
    bins = histogram_bins(flat)
    return flat[HEADER + field * bins: HEADER + (field + 1) * bins]


def _regrid(flat: Tensor, exponent: int, origin: int) -> Tensor:
    """A copy of ``flat`` on the coarser (or shifted) grid ``(exponent, origin)``."""
    bins = histogram_bins(flat)
    shift = exponent - int(flat[EXPONENT])
    if shift < 0:
        raise ValueError("a histogram grid can only grow coarser")
    occupied = torch.nonzero((_field(flat, NEG) + _field(flat, POS)) > 0).reshape(-1)
    absolute = occupied.to(torch.float64) + float(flat[ORIGIN])
    index = (torch.floor(absolute * math.ldexp(1.0, -shift)) - origin).long()
    if index.numel() and (int(index.min()) < 0 or int(index.max()) >= bins):
        raise RuntimeError("histogram regrid out of range")
    out = empty_histogram(bins).to(flat.device)
    out[:HEADER] = flat[:HEADER]
    out[EXPONENT], out[ORIGIN] = exponent, origin
    for field in (NEG, POS, PRO):
        _field(out, field).index_add_(0, index, _field(flat, field)[occupied])
    _field(out, BIN_MIN).scatter_reduce_(0, index, _field(flat, BIN_MIN)[occupied], reduce="amin")
    _field(out, BIN_MAX).scatter_reduce_(0, index, _field(flat, BIN_MAX)[occupied], reduce="amax")
    return out
