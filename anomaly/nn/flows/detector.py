"""A DifferNet-style density model: pooled multi-scale CNN features → normalizing flow → −log p."""

from __future__ import annotations

from collections.abc import Sequence

import kornia
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anomaly.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from anomaly.nn.flows.coupling import Flow, FlowInputError, check_score, per_dimension
from anomaly.nn.flows.position import position_encoding
from anomaly.nn.smoothing import gaussian_blur


class FlowDensityModel(nn.Module):
    """Features of a frozen backbone at several image scales (each layer global-average-pooled,
    everything concatenated) modelled by a normalizing flow; ``forward(image) -> (map, score)``.

    Args:
        backbone: a frozen ``FeatureExtractor`` (``forward(image) -> {layer: B×C×h×w}``, ``channels``).
        flow: a ``Flow`` over ``len(scales) × Σ channels`` features.
        scales: side lengths the image is resized to before the backbone (DifferNet: 448, 224, 112).
        n_views: test views averaged into the score (view 0 is the image itself).
        view_rotation, view_brightness: the views' rotation range (degrees, ±) and brightness factor
            range (1 ± b); drawn once from ``view_seed`` so scores are deterministic.
        mean, std: the data's normalisation (brightness changes act on the un-normalised image).
        sigma: Gaussian blur of the gradient map, in pixels of the input.
        cells: spatial pooling. 1 (the paper, DifferNet): every layer's map global-average-pooled, one
            vector per image. g > 1 (locality-preserving, not in the paper): average-pooled to a g×g grid
            of cells, each cell's vector a sample of the same flow; the image's −log p is the maximum
            over its cells, so a small defect is not averaged away by the rest of the image.
        A flow built with ``cond_dim`` > 0 (needs ``cells`` > 1) is conditioned on each cell's
        sinusoidal position code of that size (CFlow, Gudovskiy et al., WACV 2022; not in the paper):
        one flow, but the density it models may differ from one cell to the next.
        score: what a view scores (``per_dimension``): ``nll`` (½‖z‖² − log|det J|, ours), ``neg_log_pz``
            (½‖z‖², both papers' −log p_Z(z)) or ``z2`` (mean z², DifferNet's code). The map is always the
            input gradient of the NLL (DifferNet's ``localization.py``).
        scale_mode: how the smaller scales are made: ``bilinear`` (antialiased, ours) or ``nearest``
            (DifferNet's ``F.interpolate`` default).
        rotation_fill: what rotations pad with: ``mean`` (zeros of the normalised image, ours) or
            ``black`` (pixel value 0, torchvision's ``RandomRotation`` as DifferNet uses it).
    """

    SCALE_MODES = ("bilinear", "nearest")
    FILLS = ("mean", "black")

    def __init__(
        self,
        backbone: nn.Module,
        flow: Flow,
        scales: Sequence[int],
        n_views: int = 8,
        view_rotation: float = 180.0,
        view_brightness: float = 0.1,
        view_seed: int = 0,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        sigma: float = 4.0,
        cells: int = 1,
        score: str = "nll",
        scale_mode: str = "bilinear",
        rotation_fill: str = "mean",
    ) -> None:
        super().__init__()
        self.score = check_score(score)
        if scale_mode not in self.SCALE_MODES or rotation_fill not in self.FILLS:
            raise FlowInputError(f"model.scale_mode={scale_mode} / model.rotation_fill={rotation_fill} is unknown; "
                                 f"choose scale_mode from {list(self.SCALE_MODES)}, rotation_fill from {list(self.FILLS)}.")
        self.scale_mode, self.rotation_fill = scale_mode, rotation_fill
        if int(cells) < 1:
            raise FlowInputError(f"model.cells={cells} must be at least 1 (1 = global average pooling, the paper).")
        self.cells = int(cells)
        self.backbone, self.flow = backbone, flow
        code = None
        if flow.cond_dim:
            if self.cells == 1:
                raise FlowInputError(f"model.position_dim={flow.cond_dim} conditions the flow on the position of a "
                                     "cell; it needs model.cells > 1 (or set model.position_dim=0).")
            code = position_encoding(self.cells, flow.cond_dim)
        self.register_buffer("position_code", code, persistent=False)
        self.scales = [int(s) for s in scales]
        if int(n_views) < 1:
            raise FlowInputError(f"model.n_views={n_views} must be at least 1 (1 = the image itself only).")
        self.n_views, self.sigma = int(n_views), float(sigma)
        generator = torch.Generator().manual_seed(int(view_seed))
        angles = (torch.rand(self.n_views, generator=generator) * 2 - 1) * float(view_rotation)
        brightness = 1 + (torch.rand(self.n_views, generator=generator) * 2 - 1) * float(view_brightness)
        angles[0], brightness[0] = 0.0, 1.0
        self.register_buffer("view_angles", angles, persistent=False)
        self.register_buffer("view_brightness", brightness, persistent=False)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    @staticmethod
    def feature_dim(channels: Sequence[int], scales: Sequence[int]) -> int:
        return len(scales) * sum(int(c) for c in channels)

    def embed(self, image: Tensor) -> Tensor:
        """Pooled features: for every scale, every backbone layer's global average (B×D), or with
        ``cells`` > 1 its average over each of the g×g cells (B×g²×D)."""
        pooled = []
        for side in self.scales:
            x = image if tuple(image.shape[-2:]) == (side, side) else self.resize(image, side)
            if self.cells == 1:
                pooled += [f.mean(dim=(2, 3)) for f in self.backbone(x).values()]
            else:
                pooled += [F.adaptive_avg_pool2d(f, self.cells).flatten(2) for f in self.backbone(x).values()]
        return torch.cat(pooled, dim=1) if self.cells == 1 else torch.cat(pooled, dim=1).transpose(1, 2)

    def resize(self, image: Tensor, side: int) -> Tensor:
        """The image at ``side``×``side``, as ``scale_mode`` says."""
        if self.scale_mode == "nearest":
            return F.interpolate(image, size=(side, side), mode="nearest")
        return F.interpolate(image, size=(side, side), mode="bilinear", align_corners=False,
                             antialias=side < image.shape[-1])

    def latent(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """``(z, log|det J|)`` of every vector of ``embed``'s output: B, or B·g² cells (row-major) each
        with its position code when the flow is conditioned."""
        if features.dim() == 2:
            return self.flow(features)
        cond = None if self.position_code is None else self.position_code.repeat(features.shape[0], 1)
        return self.flow(features.reshape(-1, features.shape[-1]), cond)

    def cells_nll(self, features: Tensor) -> Tensor:
        """Per-dimension −log p of every vector (cell) of ``embed``'s output: the training loss."""
        return per_dimension(*self.latent(features), "nll")

    def per_image(self, values: Tensor, features: Tensor) -> Tensor:
        """B: a value per vector as it is, or per cell and then the maximum over an image's cells."""
        return values if features.dim() == 2 else values.view(features.shape[0], -1).amax(1)

    def features_nll(self, features: Tensor) -> Tensor:
        """Per-dimension −log p of ``embed``'s output, B: per cell, then the maximum over the cells."""
        return self.per_image(self.cells_nll(features), features)

    def features_score(self, features: Tensor) -> Tensor:
        """``model.score`` of ``embed``'s output, B: per cell, then the maximum over the cells."""
        return self.per_image(per_dimension(*self.latent(features), self.score), features)

    def rotate(self, image: Tensor, degrees: Tensor) -> Tensor:
        """Rotate each image by its angle about the centre; outside it ``rotation_fill``: the data mean
        (zeros of the normalised image) or black (pixel value 0)."""
        if bool((degrees == 0).all()):
            return image
        black = -self.mean / self.std if self.rotation_fill == "black" else None
        shifted = image if black is None else image - black
        rotated = kornia.geometry.transform.rotate(shifted, degrees.to(image), mode="bilinear", padding_mode="zeros")
        return rotated if black is None else rotated + black

    def view(self, image: Tensor, k: int) -> Tensor:
        """Test view ``k``: rotated and brightness-scaled (in pixel space) as drawn from ``view_seed``."""
        factor = self.view_brightness[k]
        if float(factor) != 1.0:
            image = image * factor + self.mean * (factor - 1) / self.std
        return self.rotate(image, self.view_angles[k].expand(image.shape[0]))

    def nll(self, image: Tensor) -> Tensor:
        """Per-dimension −log p (without the constant) of each image's features, B."""
        return self.features_nll(self.embed(image))

    def score_views(self, image: Tensor) -> Tensor:
        """Mean ``model.score`` over the ``n_views`` views, B."""
        return torch.stack([self.features_score(self.embed(self.view(image, k))) for k in range(self.n_views)]).mean(0)

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor]:
        """``(map B×1×H×W, score B)``: the score is the mean ``model.score`` over the views; the map is the
        channel-summed |∂NLL/∂image| (NLL averaged over the views), smoothed. Works under ``no_grad`` and
        ``inference_mode`` (the gradient is taken on a normal copy of the image); one view's graph at a time."""
        with torch.inference_mode(False), torch.enable_grad():
            x = image.detach().clone().requires_grad_(True)
            grad = torch.zeros_like(x)
            score = x.new_zeros(x.shape[0])
            for k in range(self.n_views):
                features = self.embed(self.view(x, k))
                z, logdet = self.latent(features)
                nll = self.per_image(per_dimension(z, logdet, "nll"), features) / self.n_views
                (g,) = torch.autograd.grad(nll.sum(), x)
                view_score = self.per_image(per_dimension(z.detach(), logdet.detach(), self.score), features)
                grad, score = grad + g, score + view_score / self.n_views
        anomaly_map = gaussian_blur(grad.abs().sum(1, keepdim=True), self.sigma)
        return anomaly_map.detach().clone(), score.clone()
