"""Anomaly-aware feature selection (AFS, RealNet §3.2), as cnulab/RealNet ``models/afs/afs.py`` does it.

For each layer and each synthetic batch, the squared feature residual of every channel
``r = (F(anomalous) − F(normal source))²`` is min-max normalised over the batch's pixels and compared
with the anomaly mask at that resolution: ``score = mean((r − mask)²)``. Scores are summed over
``afs_batches`` batches; the ``k`` channels with the lowest sum (residuals that follow the mask best)
are kept, in ascending channel order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anomaly.nn.realnet.errors import RealNetConfigError

SELECTIONS = ("afs", "random")


def channel_scores(anomalous: Tensor, normal: Tensor, mask: Tensor) -> Tensor:
    """One batch's AFS score per channel (C,), lower = better: MSE of the min-max normalised squared
    residual against the mask (nearest-resized to the feature map), over all pixels of the batch."""
    residual = (anomalous.float() - normal.float()) ** 2
    b, c, h, w = residual.shape
    residual = residual.permute(1, 0, 2, 3).reshape(c, b * h * w)
    low, high = residual.amin(1, keepdim=True), residual.amax(1, keepdim=True)
    residual = (residual - low) / (high - low + 1e-4)
    target = F.interpolate(mask.float(), (h, w), mode="nearest").permute(1, 0, 2, 3).reshape(1, b * h * w)
    return ((residual - target) ** 2).mean(1)


def lowest(scores: Tensor, k: int) -> Tensor:
    """Indices of the ``k`` lowest scores in ascending index order (NaN scores count as the worst)."""
    scores = scores.clone()
    bad = torch.isnan(scores)
    if bad.any():
        scores[bad] = scores[~bad].max() if (~bad).any() else 0.0
    return torch.topk(scores, k, largest=False).indices.sort().values


class FeatureSelection(nn.Module):
    """The kept channels of each backbone layer: AFS scores and indices as buffers (saved in checkpoints).

    Args:
        channels: channels of each layer of the backbone, in order.
        k: channels to keep per layer.
        selection: ``afs`` (fitted with :meth:`accumulate` / :meth:`finish`) or ``random`` (the same
            number of channels drawn with ``seed``; the baseline AFS is compared with).
        seed: seed of the random selection.

    Example:
        >>> sel = FeatureSelection([8], [2])
        >>> f = torch.zeros(1, 8, 4, 4); m = torch.zeros(1, 1, 4, 4); m[..., :2, :] = 1
        >>> g = f.clone(); g[:, 5, :2] = 3.0; g[:, 1, :2] = 2.0; g[:, 1, 2:] = 2.0
        >>> sel.accumulate([g], [f], m); sel.finish(); sel.indices(0).tolist()
        [0, 5]
    """

    def __init__(self, channels: Sequence[int], k: Sequence[int], selection: str = "afs", seed: int = 0) -> None:
        super().__init__()
        if selection not in SELECTIONS:
            raise RealNetConfigError(f"model.selection={selection} is not one of {list(SELECTIONS)}.")
        self.channels, self.k, self.selection = [int(c) for c in channels], [int(v) for v in k], selection
        for i, (c, kept) in enumerate(zip(self.channels, self.k, strict=True)):
            self.register_buffer(f"scores_{i}", torch.zeros(c))
            self.register_buffer(f"indices_{i}", torch.arange(kept))
        self.register_buffer("batches", torch.zeros((), dtype=torch.long))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))
        if selection == "random":
            generator = torch.Generator().manual_seed(int(seed))
            for i, (c, kept) in enumerate(zip(self.channels, self.k, strict=True)):
                self.indices(i).copy_(torch.randperm(c, generator=generator)[:kept].sort().values)
            self.fitted.fill_(True)

    def indices(self, layer: int) -> Tensor:
        """Kept channel indices of layer number ``layer``."""
        return getattr(self, f"indices_{layer}")

    def scores(self, layer: int) -> Tensor:
        """Summed AFS scores of layer number ``layer`` (zeros for ``random``)."""
        return getattr(self, f"scores_{layer}")

    @torch.no_grad()
    def accumulate(self, anomalous: Sequence[Tensor], normal: Sequence[Tensor], mask: Tensor) -> None:
        """Add one synthetic batch: per layer, features of the anomalous images and of their sources."""
        for i, (a, n) in enumerate(zip(anomalous, normal, strict=True)):
            self.scores(i).add_(channel_scores(a, n, mask))
        self.batches.add_(1)

    @torch.no_grad()
    def finish(self, scores: Sequence[Tensor] | None = None) -> None:
        """Keep the ``k`` lowest-scoring channels of every layer (``scores``: e.g. all-reduced sums)."""
        for i, kept in enumerate(self.k):
            if scores is not None:
                self.scores(i).copy_(scores[i])
            self.indices(i).copy_(lowest(self.scores(i), kept))
        self.fitted.fill_(True)

    def forward(self, features: Sequence[Tensor]) -> list[Tensor]:
        """The kept channels of each layer's feature map."""
        return [f.index_select(1, self.indices(i)) for i, f in enumerate(features)]

    def summary(self) -> Mapping[str, list[int]]:
        """Kept indices per layer number (plain lists)."""
        return {str(i): self.indices(i).tolist() for i in range(len(self.k))}
