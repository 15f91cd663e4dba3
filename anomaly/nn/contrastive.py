"""Contrastive pre-training blocks of the dense flow's feature extractor (Zhang et al., 2023), plain torch.

The siamese branches are one embedder applied to the normal and to the anomalous images (shared
weights); its embedding is the paper's "last FC output". Negatives are augmented at feature level
by interpolation, and an exponential-kernel triplet loss pulls normal embeddings together and pushes
anomalous ones away from them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ContrastiveConfigError(ValueError):
    """A contrastive pre-training option outside its range."""


def normalized_distance(u: Tensor, v: Tensor) -> Tensor:
    """Pairwise d(u, v) = ‖u/‖u‖ − v/‖v‖‖₂ of the rows of ``u`` (N×E) and ``v`` (M×E): N×M."""
    return torch.cdist(F.normalize(u, dim=1), F.normalize(v, dim=1))


def interpolate_negatives(negatives: Tensor, ratio: float, generator: torch.Generator | None = None) -> Tensor:
    """Feature-level augmentation: ``negatives`` plus ⌊ratio·M⌋ new ones ẑ = τ·z_i + (1−τ)·z_j
    (i ≠ j random rows, τ ~ U[0, 1]). The paper makes fewer new negatives than half the originals:
    ``ratio`` must lie in [0, 0.5).
    """
    if not 0.0 <= float(ratio) < 0.5:
        raise ContrastiveConfigError(
            f"model.interpolation_ratio={ratio} must lie in [0, 0.5): the paper adds fewer new negatives than "
            "half the original ones."
        )
    m = negatives.shape[0]
    n_new = int(float(ratio) * m)
    if n_new == 0 or m < 2:
        return negatives
    device = negatives.device
    i = torch.randint(0, m, (n_new,), generator=generator).to(device)
    j = (i + torch.randint(1, m, (n_new,), generator=generator).to(device)) % m  # j ≠ i
    tau = torch.rand(n_new, 1, generator=generator).to(negatives)
    return torch.cat([negatives, tau * negatives[i] + (1 - tau) * negatives[j]])


def exponential_triplet_loss(normal: Tensor, negatives: Tensor, sigma: float = 1.0, margin: float = 0.5) -> Tensor:
    """Exponential-kernel triplet loss over every (anchor i, positive j ≠ i, negative k):

        mean max(exp(−d(z_i, z_k)/σ) − exp(−d(z_i, z_j)/σ) + m, 0)

    with anchors and positives the normal embeddings, ``negatives`` the anomalous ones and ``d`` the
    ``normalized_distance``. The kernel exp(−d/σ) is a similarity, so minimising this makes positives
    similar (close) and negatives dissimilar (far). The paper prints the two kernels the other way
    round (exp(−d_ij/σ) − exp(−d_ik/σ)), which minimised pushes positives apart and pulls negatives
    in — the opposite of its stated intent; we implement the intent.

    Args:
        normal: N×E embeddings of normal images (N ≥ 2).
        negatives: M×E embeddings of anomalous images (M ≥ 1).
        sigma: kernel width σ > 0; margin: m ≥ 0.
    """
    if normal.shape[0] < 2 or negatives.shape[0] < 1:
        raise ContrastiveConfigError(
            f"The triplet loss needs at least 2 normal and 1 anomalous embedding per step, got {normal.shape[0]} "
            f"and {negatives.shape[0]}; raise data.batch_size."
        )
    positive = torch.exp(-normalized_distance(normal, normal) / sigma)  # N×N, similarity of i and j
    negative = torch.exp(-normalized_distance(normal, negatives) / sigma)  # N×M, similarity of i and k
    terms = F.relu(negative[:, None, :] - positive[:, :, None] + margin)  # N×N×M: [i, j, k]
    off_diagonal = ~torch.eye(normal.shape[0], dtype=torch.bool, device=normal.device)
    return terms[off_diagonal].mean()


class ContrastiveEmbedder(nn.Module):
    """The siamese branch: a backbone (its weights trained), every layer's map global-average-pooled and
    concatenated (the features the flow reads), and a projection head (FC → ReLU → FC) whose output is z.

    Args:
        backbone: a ``FeatureExtractor`` (``forward(image) -> {layer: B×C×h×w}``, ``channels``).
        head: hidden and output widths of the projection head (the paper's FC layers).
        train_layers: backbone parameter-name prefixes to fine-tune (``[]`` = the whole backbone).
    """

    def __init__(self, backbone: nn.Module, head: Sequence[int] = (512, 128), train_layers: Sequence[str] = ()) -> None:
        super().__init__()
        self.backbone = backbone
        prefixes = tuple(train_layers)
        for name, parameter in self.backbone.named_parameters():
            parameter.requires_grad_(not prefixes or name.startswith(prefixes))
        width = sum(int(c) for c in backbone.channels.values())
        layers: list[nn.Module] = []
        for i, h in enumerate(head):
            layers += [nn.Linear(width, int(h))] + ([nn.ReLU()] if i < len(head) - 1 else [])
            width = int(h)
        self.head = nn.Sequential(*layers)

    def pooled(self, image: Tensor) -> Tensor:
        """B×Σchannels: every backbone layer's global average, concatenated."""
        return torch.cat([f.mean(dim=(2, 3)) for f in self.backbone(image).values()], dim=1)

    def forward(self, image: Tensor) -> Tensor:
        """The embedding z (B×E) of an ImageNet-normalised batch."""
        return self.head(self.pooled(image))
