"""PaDiM's map pinned to the paper's definition, written independently in NumPy/SciPy.

A tiny fixed backbone (three seeded convolutions, strides 4/8/16) feeds both the model and the
reference. Reference: deeper maps upsampled (nearest) to the first layer's grid and concatenated,
the random channel subset, per-position mean and N−1 covariance + ε·I, √ of the quadratic form,
bilinear upsampling (half-pixel centres) to the image size, Gaussian blur σ=4 with a reflect border
(kornia's "reflect" = SciPy's "mirror", kernel 2·⌊4σ+0.5⌋+1), image score = map maximum. The
mutants check that the comparison would catch nearest→bilinear, σ 4→2, N−1→N or a dropped √.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import linalg, ndimage
from torch import nn

from anomaly.nn.padim import PadimModel

SIZE, N_TRAIN, N_TEST, N_FEATURES, SEED, EPSILON = 48, 24, 3, 9, 3, 0.01


class TinyBackbone(nn.Module):
    """Three fixed convolutions: 6 channels at stride 4, 5 at stride 8, 4 at stride 16."""

    layers = ["a", "b", "c"]
    channels = {"a": 6, "b": 5, "c": 4}
    strides = {"a": 4, "b": 8, "c": 16}
    name = "tiny"

    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.a = nn.Conv2d(3, 6, 4, stride=4)
        self.b = nn.Conv2d(6, 5, 2, stride=2)
        self.c = nn.Conv2d(5, 4, 2, stride=2)
        for conv in (self.a, self.b, self.c):
            conv.weight.data = torch.randn(conv.weight.shape, generator=generator) * 0.5
            conv.bias.data = torch.randn(conv.bias.shape, generator=generator) * 0.1
        self.requires_grad_(False)

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        a = torch.tanh(self.a(image))
        b = torch.tanh(self.b(a))
        c = torch.tanh(self.c(b))
        return {"a": a, "b": b, "c": c}


def images(seed: int, n: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, SIZE // 4, SIZE // 4, generator=generator)
    return F.interpolate(coarse, size=(SIZE, SIZE), mode="bilinear", align_corners=False) * 2 - 1


def bilinear_matrix(n_out: int, n_in: int) -> np.ndarray:
    """1-D linear interpolation with half-pixel centres (source coordinates below 0 clamp to 0)."""
    matrix = np.zeros((n_out, n_in))
    for i in range(n_out):
        src = max((i + 0.5) * n_in / n_out - 0.5, 0.0)
        i0 = min(int(np.floor(src)), n_in - 1)
        i1 = min(i0 + 1, n_in - 1)
        weight = src - i0
        matrix[i, i0] += 1 - weight
        matrix[i, i1] += weight
    return matrix


def reference(backbone: TinyBackbone, train: torch.Tensor, test: torch.Tensor, *, deeper: str = "nearest",
              sigma: float = 4.0, ddof: int = 1, root: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The paper's PaDiM in NumPy/SciPy (float64); the keywords are the mutants' knobs."""
    grid = SIZE // 4
    chosen = torch.randperm(sum(backbone.channels.values()), generator=torch.Generator().manual_seed(SEED))
    chosen = np.sort(chosen[:N_FEATURES].numpy())

    def embed(batch: torch.Tensor) -> np.ndarray:  # N×H×W×C at the first layer's grid
        with torch.no_grad():
            maps = {k: v.double().numpy() for k, v in backbone(batch).items()}
        parts = []
        for layer in backbone.layers:
            x = maps[layer]
            factor = grid // x.shape[-1]
            if deeper == "nearest":
                x = x.repeat(factor, axis=2).repeat(factor, axis=3)
            else:
                m = bilinear_matrix(grid, x.shape[-1])
                x = np.einsum("ih,nchw,jw->ncij", m, x, m)
            parts.append(x)
        return np.concatenate(parts, axis=1)[:, chosen].transpose(0, 2, 3, 1)

    x_train, x_test = embed(train), embed(test)
    distances = np.zeros(x_test.shape[:3])
    for i in range(grid):
        for j in range(grid):
            samples = x_train[:, i, j]
            mu = samples.mean(0)
            cov = np.cov(samples, rowvar=False, ddof=ddof) + EPSILON * np.eye(N_FEATURES)
            inverse = linalg.inv(cov)
            delta = x_test[:, i, j] - mu
            quadratic = np.einsum("nd,de,ne->n", delta, inverse, delta)
            distances[:, i, j] = np.sqrt(quadratic) if root else quadratic
    up = bilinear_matrix(SIZE, grid)
    maps = np.einsum("ih,nhw,jw->nij", up, distances, up)
    maps = np.stack([ndimage.gaussian_filter(m, sigma, mode="mirror", truncate=4.0) for m in maps])
    return maps, maps.reshape(len(maps), -1).max(1)


@pytest.fixture(scope="module")
def case() -> tuple[TinyBackbone, torch.Tensor, torch.Tensor, np.ndarray, np.ndarray]:
    backbone = TinyBackbone()
    train, test = images(1, N_TRAIN), images(2, N_TEST)
    model = PadimModel(backbone, (SIZE, SIZE), n_features=N_FEATURES, epsilon=EPSILON, sigma=4.0, seed=SEED)
    with torch.no_grad():
        for part in train.split(10):
            model.gaussian.accumulate(model.embed(part))
        model.gaussian.finalize()
        anomaly_map, score = model(test)
    return backbone, train, test, anomaly_map[:, 0].double().numpy(), score.double().numpy()


def test_map_and_score_equal_the_papers_definition(case) -> None:
    backbone, train, test, ours, score = case
    expected_map, expected_score = reference(backbone, train, test)
    assert ours.shape == expected_map.shape == (N_TEST, SIZE, SIZE)
    np.testing.assert_allclose(ours, expected_map, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(score, expected_score, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mutant", [{"deeper": "bilinear"}, {"sigma": 2.0}, {"ddof": 0}, {"root": False}],
                         ids=["bilinear-deeper-layers", "sigma-2", "covariance-over-N", "no-sqrt"])
def test_the_comparison_catches_a_changed_step(case, mutant: dict) -> None:
    backbone, train, test, ours, _ = case
    mutated, _ = reference(backbone, train, test, **mutant)
    assert not np.allclose(ours, mutated, rtol=1e-5, atol=1e-5)
