"""RealNet blocks: AFS scores and keeps the right channels, RRS is a per-image top-k, the UNet shape contract."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from anomaly.nn.backbone import FeatureExtractor
from anomaly.nn.realnet import (
    FeatureSelection,
    RealNetConfigError,
    RealNetModel,
    ReconstructionUNet,
    ResidualSelection,
    channel_scores,
)

pytestmark = pytest.mark.one_thread


def test_channel_score_is_the_mse_of_the_min_max_normalised_residual_against_the_mask() -> None:
    normal = torch.zeros(1, 1, 2, 2)
    anomalous = torch.tensor([[[[2.0, 1.0], [0.0, 0.0]]]])
    mask = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]]])
    # r = (4, 1, 0, 0) → min-max (÷ (4 + 1e-4)) ≈ (1, 0.25, 0, 0); squared error to the mask ≈ (0, 0.5625, 0, 0).
    expected = ((4 / 4.0001 - 1) ** 2 + (1 / 4.0001 - 1) ** 2) / 4
    assert channel_scores(anomalous, normal, mask).item() == pytest.approx(expected, rel=1e-6)
    # The mask is resized (nearest) to the feature map: an 8×8 mask of the same pattern gives the same score.
    assert channel_scores(anomalous, normal, F.interpolate(mask, (8, 8))).item() == pytest.approx(expected, rel=1e-6)


def random_mask(generator: torch.Generator) -> torch.Tensor:
    mask = torch.zeros(4, 1, 32, 32)
    for b in range(4):
        y, x = torch.randint(0, 20, (2,), generator=generator).tolist()
        mask[b, :, y:y + 12, x:x + 12] = 1
    return mask


def constructed_layer(generator: torch.Generator, mask: torch.Tensor, follow: list[int], channels: int,
                      side: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Features whose residual follows the mask in the ``follow`` channels; the others change exactly where
    the image is normal, or everywhere, or not at all."""
    normal = torch.randn(4, channels, side, side, generator=generator)
    small = F.interpolate(mask, (side, side), mode="nearest")[:, 0]
    anomalous = normal.clone()
    for c in range(channels):
        if c in follow:
            anomalous[:, c] += 3.0 * small * (1 + 0.1 * torch.rand(4, side, side, generator=generator))
        elif c % 3 == 0:
            anomalous[:, c] += 3.0 * (1 - small)
        elif c % 3 == 1:
            anomalous[:, c] += torch.randn(4, side, side, generator=generator)
    return anomalous, normal


def test_afs_keeps_exactly_k_channels_and_prefers_those_whose_residuals_follow_the_mask() -> None:
    generator = torch.Generator().manual_seed(0)
    follow, channels, sides = [[2, 7, 9], [1, 4]], [12, 6], [8, 4]
    selection = FeatureSelection(channels, [3, 2])
    for _ in range(3):
        mask = random_mask(generator)
        layers = [constructed_layer(generator, mask, f, c, s) for f, c, s in zip(follow, channels, sides, strict=True)]
        selection.accumulate([a for a, _ in layers], [n for _, n in layers], mask)
    selection.finish()
    assert [selection.indices(i).tolist() for i in range(2)] == follow
    assert int(selection.batches) == 3 and bool(selection.fitted)
    kept = selection([torch.arange(12.0).view(1, 12, 1, 1), torch.arange(6.0).view(1, 6, 1, 1)])
    assert kept[0].flatten().tolist() == [2.0, 7.0, 9.0] and kept[1].flatten().tolist() == [1.0, 4.0]


def test_random_selection_keeps_k_distinct_channels_drawn_by_its_seed() -> None:
    a, b, c = (FeatureSelection([40], [10], "random", seed) for seed in (0, 0, 1))
    assert a.indices(0).tolist() == b.indices(0).tolist() != c.indices(0).tolist()
    assert len(set(a.indices(0).tolist())) == 10 and a.indices(0).tolist() == sorted(a.indices(0).tolist())


def test_rrs_equals_a_brute_force_top_k_over_the_normalised_residuals() -> None:
    torch.manual_seed(0)
    residuals = [torch.rand(3, 5, 8, 8), torch.rand(3, 7, 4, 4) * 2, torch.rand(3, 4, 2, 2) * 3]
    rrs = ResidualSelection(16, k_max=4, k_mean=3)
    rrs.norm.running_mean.uniform_(0, 1)
    rrs.norm.running_var.uniform_(0.5, 2)
    rrs.eval()
    got = rrs.select(residuals)
    stacked = torch.cat([F.interpolate(r, (8, 8), mode="bilinear", align_corners=True) for r in residuals], 1)
    mean, var = rrs.norm.running_mean, rrs.norm.running_var
    for b in range(3):
        expected = []
        for mode, k in (("max", 4), ("mean", 3)):
            stats = []
            for c in range(16):
                ranked = (stacked[b, c] - mean[c]) / torch.sqrt(var[c] + rrs.norm.eps)
                stats.append((float(ranked.max() if mode == "max" else ranked.mean()), c))
            expected += [stacked[b, c] for _, c in sorted(stats, reverse=True)[:k]]
        assert torch.allclose(got[b], torch.stack(expected), atol=1e-6), b
    assert rrs(residuals, (32, 32)).shape == (3, 2, 32, 32)


def test_reconstruction_unet_keeps_the_shape_and_starts_at_zero() -> None:
    net = ReconstructionUNet(16)
    x = torch.randn(2, 16, 8, 8)
    assert net(x).shape == x.shape and torch.count_nonzero(net(x)) == 0
    with torch.no_grad():
        net.out[-1].weight.normal_()
    assert net(x).abs().sum() > 0  # the zero start is the output convolution's, not a dead net


def backbone() -> FeatureExtractor:
    return FeatureExtractor("efficientnet_lite0", ["blocks.1", "blocks.2"], weights="none")


def test_k_larger_than_a_layer_names_the_layer_and_its_channel_count() -> None:
    with pytest.raises(RealNetConfigError, match=r"^model\.k=\[8, 41\] keeps 41 channels of layer blocks\.2, which "
                                                 r"has 40 channels in efficientnet_lite0; set its entry to at most 40\.$"):
        RealNetModel(backbone(), [8, 41], k_max=4, k_mean=4)
    with pytest.raises(RealNetConfigError, match=r"^model\.k=\[8\] has 1 entries but model\.backbone\.layers"):
        RealNetModel(backbone(), [8], k_max=4, k_mean=4)
    with pytest.raises(RealNetConfigError, match=r"^model\.k_max=64 must lie in \[1, 24\]"):
        RealNetModel(backbone(), [8, 16], k_max=64, k_mean=4)


def test_an_image_size_the_unets_cannot_halve_is_one_sentence() -> None:
    model = RealNetModel(backbone(), [8, 16], k_max=4, k_mean=4)
    model.check_image_size(64, 96)
    with pytest.raises(RealNetConfigError, match=r"^data\.image_size=48x48 gives layer blocks\.2 \(stride 8\) a map .* "
                                                 r"use sides divisible by 32\.$"):
        model.check_image_size(48, 48)


def test_score_border_keeps_the_edges_out_of_the_image_score_only() -> None:
    model = RealNetModel(backbone(), [8, 16], k_max=4, k_mean=4, pool_size=2, score_border=2)
    anomaly_map = torch.zeros(2, 1, 16, 16)
    anomaly_map[0, :, 0, 15] = 1.0          # a hot corner, as trained maps show on normal images
    anomaly_map[1, :, 6:8, 6:8] = 0.5       # an inner defect
    assert model.score(anomaly_map).tolist() == pytest.approx([0.0, 0.5])
    model.score_border = 0                  # the paper's score: the corner (pooled over 2×2) wins
    assert model.score(anomaly_map).tolist() == pytest.approx([0.25, 0.5])
    with pytest.raises(RealNetConfigError, match=r"^model\.score_border=-1 must be 0 or more"):
        RealNetModel(backbone(), [8, 16], k_max=4, k_mean=4, score_border=-1)
    with pytest.raises(RealNetConfigError, match=r"^model\.score_border=32 leaves nothing of a 64x64 map; use a "
                                                 r"border below 32\.$"):
        RealNetModel(backbone(), [8, 16], k_max=4, k_mean=4, score_border=32).check_image_size(64, 64)


def test_rrs_in_training_mode_ranks_on_batch_statistics_and_passes_gradients_to_the_raw_residuals() -> None:
    generator = torch.Generator().manual_seed(1)
    scales = torch.tensor([1.0, 8.0, 0.2, 3.0, 0.5, 5.0])  # raw magnitudes differ: the raw top-k would differ
    residuals = [(torch.rand(4, 6, 8, 8, generator=generator) * scales[:, None, None]).requires_grad_()]
    rrs = ResidualSelection(6, k_max=2, k_mean=2)
    rrs.train()
    got = rrs.select(residuals)
    stacked = residuals[0].detach()
    mean, var = stacked.mean((0, 2, 3)), stacked.var((0, 2, 3), unbiased=False)
    normalised = (stacked - mean[None, :, None, None]) / torch.sqrt(var[None, :, None, None] + rrs.norm.eps)
    differs = False
    for b in range(4):
        expected = []
        for stat in (lambda m: m.flatten(1).amax(1), lambda m: m.flatten(1).mean(1)):
            order = stat(normalised[b]).argsort(descending=True)[:2]
            expected += [stacked[b, c] for c in order.tolist()]
            differs |= order.tolist() != stat(stacked[b]).argsort(descending=True)[:2].tolist()
        assert torch.allclose(got[b].detach(), torch.stack(expected), atol=1e-6), b
    assert differs, "the batch statistics must change the ranking somewhere, or this test could not tell"
    # The official BatchNorm: momentum 0.9 (from 0 and 1), unbiased running variance, no affine part.
    assert torch.allclose(rrs.norm.running_mean, 0.9 * mean, atol=1e-6)
    assert torch.allclose(rrs.norm.running_var, 0.1 + 0.9 * stacked.var((0, 2, 3), unbiased=True), atol=1e-5)
    assert rrs.norm.weight is None
    got.sum().backward()  # RealNet's stop_grad: False, the segmentation loss reaches the UNets
    assert residuals[0].grad is not None and residuals[0].grad.abs().sum() > 0


def test_the_reconstruction_unet_at_the_papers_k_has_the_official_parameter_count() -> None:
    with torch.device("meta"):
        counts = [sum(p.numel() for p in ReconstructionUNet(k).parameters()) for k in (256, 512)]
    assert counts == [51_846_144, 207_271_936]  # layer1/layer4 (k = 256) and layer2/layer3 (k = 512)
