"""Exact curves: sorted keys, streamed in parts, with work proportional to the positives only.

After sorting, every run of equal scores is one threshold group. Only groups holding a positive
change TP or PRO; between them the curve moves horizontally (false positives only), which adds
nothing to AP or F1-max and is a rectangle for AUROC and AUPRO. So each part needs one pass over
its payloads to find the positives; the rest (their groups' bounds by binary search, counts, region
weights) is done on arrays as long as the number of positives.

Parts come from one sorted array (cut at group boundaries) or, for pooled values, from several
sorted runs merged bucket by bucket (no copy of the whole data).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from anomaly.metrics.curves import CurveAccumulator
from anomaly.metrics.keys import low_half, order_score

#: Keys per part (a part never splits a group of equal scores, so a huge tie makes a larger one).
PART = 1 << 20


@dataclass(frozen=True)
class Tie:
    """A threshold group summarised without its keys: ``size`` samples, ``positives``, region ``weight``,
    and its score's ``order`` value (the high half of its keys)."""

    size: int
    positives: int
    weight: float
    order: int = 0


def sort_keys(keys: np.ndarray) -> None:
    """Sort packed keys in place (numpy's vectorised introsort; no index array, no extra copy)."""
    keys.sort(kind="quicksort")


def array_parts(keys: np.ndarray, part: int = PART) -> Iterator[np.ndarray]:
    """Views of a sorted key array, highest scores first, cut only between groups of equal scores."""
    end = keys.size
    while end > 0:
        start = max(0, end - part)
        if start > 0:
            start = int(np.searchsorted(keys[:end], (keys[start] >> 32) << 32, side="left"))
        yield keys[start:end]
        end = start


def merged_parts(runs: Sequence[np.ndarray], part: int = PART) -> Iterator[np.ndarray | Tie]:
    """The keys of several sorted runs in sorted parts, highest scores first, without merging them all.

    Bucket bounds are score boundaries taken from a regular sample of every run, so each bucket
    holds about ``part`` keys (at most ``part * 1.5`` plus one group of equal scores); a score
    that fills a whole bucket on its own is summarised as a :class:`Tie` instead of being copied.
    """
    runs = [r for r in runs if r.size]
    total = sum(r.size for r in runs)
    if not runs:
        return
    per_run = 4 * (total // part + 1)
    sample = np.concatenate([r[:: max(1, r.size // per_run)] for r in runs])
    sample.sort()
    scores = sample[np.linspace(0, sample.size, total // part + 2)[1:-1].astype(np.int64)] >> 32
    heavy = scores[1:][scores[1:] == scores[:-1]]  # a score cut twice fills a bucket: isolate it
    cuts = np.unique(np.concatenate([scores, heavy + 1])) << 32
    bounds = np.stack([np.searchsorted(r, cuts) for r in runs]) if cuts.size else np.empty((len(runs), 0), np.int64)
    high = np.array([r.size for r in runs])
    for j in range(cuts.size, -1, -1):
        low = bounds[:, j - 1] if j > 0 else np.zeros(len(runs), dtype=np.int64)
        pieces = [r[a:b] for r, a, b in zip(runs, low, high, strict=True) if b > a]
        high = low
        if not pieces:
            continue
        top = int(max(p[-1] for p in pieces) >> 32)
        if top == int(min(p[0] for p in pieces) >> 32) and sum(p.size for p in pieces) > part:
            yield _tie(pieces)
        elif len(pieces) == 1:
            yield pieces[0]
        else:
            merged = np.concatenate(pieces)
            sort_keys(merged)
            yield merged


def _tie(pieces: list[np.ndarray]) -> Tie:
    positives, weight = 0, 0.0
    for piece in pieces:
        payload = low_half(piece)
        nonzero = payload[payload > 0]
        positives += nonzero.size
        weight += float(np.sum(1.0 / nonzero.astype(np.float64)))
    return Tie(size=sum(p.size for p in pieces), positives=positives, weight=weight,
               order=int(pieces[0][0] >> 32))


def stream(parts: Iterable[np.ndarray | Tie], accumulator: CurveAccumulator, with_pro: bool) -> None:
    """Feed every threshold group that holds a positive to ``accumulator``, highest score first.

    Args:
        parts: sorted key arrays (or summarised ties), each above all later ones, none splitting a group.
        accumulator: receives, per group, its positives and negatives and the cumulative counts.
        with_pro: also pass region weights (``1 / payload`` summed over the group's positives).
    """
    above, tp_above = 0, 0  # samples and positives scored above the current part
    for part in parts:
        if isinstance(part, Tie):
            if part.positives:
                tp = tp_above + part.positives
                accumulator.add(p=np.array([part.positives]), q=np.array([part.size - part.positives]),
                                tp=np.array([tp]), fp=np.array([above + part.size - tp]),
                                w=np.array([part.weight]) if with_pro else None,
                                score=order_score(np.array([part.order])))
                tp_above = tp
                if accumulator.finished:
                    return
            above += part.size
            continue
        payload = low_half(part)
        positive = np.nonzero(payload)[0]
        if positive.size:
            order = part[positive] >> 32
            first = np.empty(order.size, dtype=bool)
            first[0] = True
            np.not_equal(order[1:], order[:-1], out=first[1:])
            runs = np.nonzero(first)[0]
            group = order[runs]
            lo, hi = _group_bounds(part, group, positive[runs], positive[np.append(runs[1:], positive.size) - 1])
            p = np.diff(np.append(runs, positive.size))[::-1]
            weight = None
            if with_pro:
                weight = np.add.reduceat(1.0 / payload[positive].astype(np.float64), runs)[::-1]
            tp = tp_above + np.cumsum(p)
            at_or_above = (above + part.size - lo)[::-1]  # samples scored at or above each group
            accumulator.add(p=p, q=(hi - lo)[::-1] - p, tp=tp, fp=at_or_above - tp, w=weight,
                            score=order_score(group[::-1]))
            tp_above = int(tp[-1])
            if accumulator.finished:
                return
        above += part.size


def _group_bounds(part: np.ndarray, group: np.ndarray, first: np.ndarray, last: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[lo, hi) of each group of equal scores, given the first and last positive in it.

    Most groups end at their positives (no tied negative); only the others need a binary search.
    """
    lo, hi = first.copy(), last + 1
    tied = np.nonzero((lo > 0) & ((part[np.maximum(lo - 1, 0)] >> 32) == group))[0]
    lo[tied] = np.searchsorted(part, group[tied] << 32, side="left")
    tied = np.nonzero((hi < part.size) & ((part[np.minimum(hi, part.size - 1)] >> 32) == group))[0]
    hi[tied] = np.searchsorted(part, (group[tied] + 1) << 32, side="left")
    return lo, hi
