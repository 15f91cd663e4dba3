"""The F1-optimal threshold the metrics record is sklearn's argmax of the F1 curve, exact and binned, with ties
and over batch splits; flagging ``score >= threshold`` reproduces F1-max."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import precision_recall_curve

from anomaly.deploy.thresholds import Thresholds
from anomaly.metrics import AnomalyMetrics


def sklearn_threshold(labels: np.ndarray, scores: np.ndarray) -> float:
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-300)
    return float(thresholds[int(np.argmax(f1[:-1]))])


@pytest.mark.parametrize("mode", ["exact", "binned"])
def test_image_and_pixel_thresholds_are_the_f1_optimal_ones(mode: str) -> None:
    g = torch.Generator().manual_seed(3)
    labels = (torch.rand(300, generator=g) < 0.3).long()
    scores = (torch.randn(300, generator=g) + 1.2 * labels).round(decimals=1)  # many ties
    masks = (torch.rand(300, 1, 4, 4, generator=g) < 0.1).float() * labels.view(-1, 1, 1, 1)
    maps = (torch.randn(300, 1, 4, 4, generator=g) + 1.5 * masks).round(decimals=1)
    metrics = AnomalyMetrics(["a", "b"], mode=mode, bins=4096)
    for start in range(0, 300, 64):  # several batches, both categories
        rows = slice(start, start + 64)
        categories = ["a" if i % 2 else "b" for i in range(start, min(start + 64, 300))]
        metrics.update(categories, maps[rows], scores[rows], masks[rows], labels[rows])
    results = metrics.compute()
    a = torch.arange(300) % 2 == 1
    for group, rows in (("a", a), ("b", ~a), ("pooled", torch.ones(300, dtype=torch.bool))):
        found = metrics.thresholds[group]
        assert found["image_f1max"] == pytest.approx(sklearn_threshold(labels[rows].numpy(), scores[rows].numpy()))
        assert found["pixel_f1max"] == pytest.approx(
            sklearn_threshold(masks[rows].flatten().numpy(), maps[rows].flatten().numpy()))
        flagged = scores[rows] >= found["image_f1max"]
        tp = int((flagged & (labels[rows] == 1)).sum())
        f1 = 2 * tp / (int(flagged.sum()) + int(labels[rows].sum()))
        assert f1 == pytest.approx(results[group]["image_f1max"])


def test_normalisation_puts_the_threshold_at_one_half_and_override_is_recorded() -> None:
    t = Thresholds(image=2.0, pixel=1.0, score_min=0.0, score_max=4.0, map_min=0.0, map_max=3.0, source="val")
    assert t.normalise([2.0, 0.0, 4.0, 100.0]).tolist() == [0.5, 0.0, 1.0, 1.0]
    assert t.decide([1.99, 2.0]).tolist() == [False, True]
    moved = t.with_overrides(image=3.0)
    assert (moved.source, moved.image, moved.pixel) == ("override", 3.0, 1.0)
    assert Thresholds.from_dict(t.to_dict()) == t
