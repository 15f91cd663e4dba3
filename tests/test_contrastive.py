"""Contrastive pre-training of the flow's extractor: the loss's direction, interpolated negatives, one step."""

from __future__ import annotations

import pytest
import torch

from anomaly.models.contrastive import ContrastiveBackbone
from anomaly.nn.contrastive import (
    ContrastiveConfigError,
    exponential_triplet_loss,
    interpolate_negatives,
    normalized_distance,
)

pytestmark = pytest.mark.one_thread

BACKBONE = {"_target_": "anomaly.nn.backbone.FeatureExtractor", "name": "efficientnet_lite0",
            "layers": ["blocks.1", "blocks.2"], "weights": "none"}


def test_minimising_the_loss_pulls_positives_together_and_pushes_negatives_apart() -> None:
    generator = torch.Generator().manual_seed(0)
    normal = torch.randn(6, 4, generator=generator).requires_grad_(True)
    negatives = torch.randn(5, 4, generator=generator).requires_grad_(True)
    optimizer = torch.optim.SGD([normal, negatives], lr=0.5)

    def spread() -> tuple[float, float]:
        with torch.no_grad():
            d_pos = normalized_distance(normal, normal)
            return float(d_pos.sum() / (6 * 5)), float(normalized_distance(normal, negatives).mean())

    pos_before, neg_before = spread()
    for _ in range(100):
        optimizer.zero_grad()
        exponential_triplet_loss(normal, negatives, sigma=1.0, margin=1.0).backward()
        optimizer.step()
    pos_after, neg_after = spread()
    assert pos_after < 0.5 * pos_before, (pos_before, pos_after)
    assert neg_after > neg_before + 0.3, (neg_before, neg_after)


def test_the_loss_is_the_hinge_of_the_two_kernels_averaged_over_triplets() -> None:
    # Two identical normal embeddings (d_ij = 0) and one negative at distance √2 (orthogonal).
    normal = torch.tensor([[1.0, 0.0], [2.0, 0.0]])
    negative = torch.tensor([[0.0, 3.0]])
    sigma, margin = 0.5, 0.2
    expected = max(torch.exp(torch.tensor(-(2**0.5) / sigma)).item() - 1.0 + margin, 0.0)
    assert float(exponential_triplet_loss(normal, negative, sigma, margin)) == pytest.approx(expected, abs=1e-6)
    # The negative far enough: zero loss; swapped roles (the paper's printed sign) would not be zero.
    assert float(exponential_triplet_loss(normal, negative, sigma, margin=0.0)) == 0.0
    assert float(exponential_triplet_loss(negative.repeat(2, 1), normal[:1], sigma, margin=0.0)) == 0.0
    with pytest.raises(ContrastiveConfigError, match="at least 2 normal"):
        exponential_triplet_loss(normal[:1], negative)


def test_interpolated_negatives_lie_between_two_originals_and_are_fewer_than_half() -> None:
    negatives = torch.eye(10)
    out = interpolate_negatives(negatives, 0.4, torch.Generator().manual_seed(0))
    assert out.shape == (14, 10) and torch.equal(out[:10], negatives)
    new = out[10:]
    # On the segment between two distinct originals: two non-zero weights summing to 1.
    assert torch.allclose(new.sum(1), torch.ones(4)) and bool(((new > 0).sum(1) <= 2).all())
    assert bool(((new > 0).sum(1) >= 1).all()) and not any(bool((row == 1).all()) for row in new)
    with pytest.raises(ContrastiveConfigError, match="interpolation_ratio=0.5"):
        interpolate_negatives(negatives, 0.5)


def test_a_training_step_trains_the_chosen_layers_and_the_centre_scores_anomalies() -> None:
    torch.manual_seed(0)
    model = ContrastiveBackbone(BACKBONE, head=[16, 8], train_layers=["model.blocks.2"], interpolation_ratio=0.25)
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trained and all(n.startswith(("model.head", "model.backbone.model.blocks.2")) for n in trained)
    normal = torch.randn(4, 3, 32, 32) * 0.2
    anomalous = normal.clone()
    anomalous[:, :, 8:20, 8:20] += 3.0
    batch = {"image": anomalous, "source": normal, "label": torch.ones(4, dtype=torch.long),
             "defect": ["good"] * 4, "category": ["toy"] * 4}
    optimizer = model.configure_optimizers()
    loss = model.training_step(batch, 0)
    optimizer.zero_grad()
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for n, p in model.named_parameters() if n in trained)
    frozen = [p for n, p in model.named_parameters() if n not in trained]
    assert frozen and all(p.grad is None for p in frozen)
    with torch.no_grad():
        model.center.copy_(torch.nn.functional.normalize(model.embed(normal), dim=1).mean(0))
        anomaly_map, score = model(torch.cat([normal, anomalous]))
    assert anomaly_map.shape == (8, 1, 32, 32) and torch.equal(anomaly_map[:, 0, 5, 7], score)
    assert float(score[4:].mean()) > float(score[:4].mean())
    one_normal = {**batch, "defect": ["good"] + ["hole"] * 3}  # a short last batch: the step is skipped
    assert model.training_step(one_normal, 1) is None


def test_cutpaste_perlin_draws_both_strategies_and_skips_the_listed_categories() -> None:
    import numpy as np

    from anomaly.synthesis.base import SynthesisConfigError
    from anomaly.synthesis.one_of import OneOf

    class Marker:
        """A strategy writing its own value into a fixed square."""

        def __init__(self, value: int) -> None:
            self.value, self.max_attempts = value, 1

        def synthesize(self, image, rng, category):
            out = image.copy()
            out[2:6, 2:6] = self.value
            region = np.zeros(image.shape[:2], bool)
            region[2:6, 2:6] = True
            return out, region

    strategy = OneOf({"a": Marker(10), "b": Marker(250)}, normal_probability=0.0, skip_categories=["tile"])
    image = np.full((16, 16, 3), 128, np.uint8)
    drawn = {int(strategy(image, np.random.default_rng(i), "bottle")[0][3, 3, 0]) for i in range(20)}
    assert drawn == {10, 250}
    skipped, mask = strategy(image, np.random.default_rng(0), "tile")
    assert np.array_equal(skipped, image) and not mask.any()
    with pytest.raises(SynthesisConfigError, match=r"synthesis.weights names \['c'\]"):
        OneOf({"a": Marker(1)}, weights={"c": 1.0})
