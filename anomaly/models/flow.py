"""Normalizing-flow detectors over pooled multi-scale features: DifferNet and the dense flow (cdflow)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from anomaly.config.targets import check_data
from anomaly.data.errors import DataError
from anomaly.data.few_shot import check_same_few_shot, is_real_anomaly
from anomaly.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from anomaly.models.base import AnomalyModule, build_block
from anomaly.models.lr_schedules import check_schedule, over_run
from anomaly.nn.backbone import BackboneError, FeatureExtractor
from anomaly.nn.content_cache import ContentCache
from anomaly.nn.flows import Flow, FlowDensityModel
from anomaly.nn.flows.coupling import FlowInputError, check_clamp


class FlowDetector(AnomalyModule):
    """DifferNet (Rudolph et al., WACV 2021) and the continuous dense flow (Zhang et al., 2023).

    A frozen backbone sees the image at ``scales``; every layer's map is global-average-pooled and
    everything is concatenated into one D-dim vector per image, whose density a normalizing flow
    learns from normal images (randomly rotated, ``train_views`` rotations per image and step).
    Loss: NLL per dimension (½‖z‖² − log|det J|)/D. Score: the mean ``score`` over ``n_views``
    rotated/brightness-changed views; map: the smoothed |∂NLL/∂image| (the paper's localisation).

    ``kind=plain`` is DifferNet (8 two-sided affine couplings, subnets 2048-wide, α = 3);
    ``kind=dense`` the HINT-style recursive coupling of the dense flow (3 blocks, width 768, α = 2,
    ``depth`` levels of recursion).

    Args:
        backbone: frozen feature extractor (``model.backbone.*`` config node, or a module).
        kind, n_blocks, hidden, clamp, depth, dropout, flow_seed: the flow (``anomaly.nn.flows.Flow``).
        scales: image sides fed to the backbone (paper 448/224/112).
        rotation: training augmentation, uniform rotation in ±``rotation`` degrees.
        train_views: rotated copies of each training image per step (DifferNet: 4).
        n_views, view_rotation, view_brightness, view_seed: the test views.
        mean, std: data normalisation (for brightness changes); sigma: map blur in pixels.
        cells: 1 = global average pooling (the paper); g > 1 = a g×g grid of cells scored by the same
            flow, the image's score the worst cell (``FlowDensityModel``; not in the paper).
        position_dim: with ``cells`` > 1, the size of each cell's sinusoidal position code that conditions
            every coupling (CFlow-style; 0 = none, the paper).
        score: ``nll`` (½‖z‖² − log|det J|, ours), ``neg_log_pz`` (½‖z‖², both papers' −log p_Z(z)) or
            ``z2`` (mean z², DifferNet's ``train.py``); the loss is always the NLL.
        scale_mode: ``bilinear`` (antialiased, ours) or ``nearest`` (DifferNet) for the smaller scales.
        rotation_fill: ``mean`` (ours) or ``black`` (DifferNet's torchvision rotation) outside rotated images.
        lr, betas, eps, weight_decay: Adam.
        lr_schedule: ``constant`` (DifferNet, the paper) or ``cosine`` (to 0 over the run's steps: not in the
            paper, for short runs whose last checkpoints should come from a small learning rate).
        feature_cache: keep the pooled training features of up to this many distinct images in memory
            (``anomaly.nn.content_cache``; keyed by the image's content, so never stale): the frozen backbone
            then runs once per training image instead of once per epoch. Used only when training does not
            rotate (``rotation`` = 0); 0: off.
        pretrained: the contrastively pre-trained extractor (``model=contrastive_backbone``): its run folder
            (``checkpoints/<category>/best.ckpt`` is taken per category, else ``last.ckpt``) or one
            checkpoint file; loaded with ``weights_only=True`` into the backbone before fitting. When it
            records the real anomalies it trained on (``anomaly_few_shot``), this run must hold out the same.
        **kwargs: ``AnomalyModule`` options (evaluator, calibrate).
    """

    def __init__(
        self,
        backbone: FeatureExtractor | Mapping[str, Any],
        kind: str = "dense",
        n_blocks: int = 3,
        hidden: Sequence[int] = (768, 768),
        clamp: float = 2.0,
        depth: int = 3,
        dropout: float = 0.0,
        flow_seed: int = 0,
        scales: Sequence[int] = (448, 224, 112),
        rotation: float = 180.0,
        train_views: int = 4,
        n_views: int = 8,
        view_rotation: float = 180.0,
        view_brightness: float = 0.1,
        view_seed: int = 0,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        sigma: float = 4.0,
        lr: float = 2e-4,
        betas: Sequence[float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        pretrained: str | None = None,
        cells: int = 1,
        position_dim: int = 0,
        lr_schedule: str = "constant",
        feature_cache: int = 0,
        score: str = "nll",
        scale_mode: str = "bilinear",
        rotation_fill: str = "mean",
        **kwargs: Any,
    ) -> None:
        check_clamp(clamp)  # before anything is built or read
        check_schedule(lr_schedule, FlowInputError)
        block = backbone if isinstance(backbone, nn.Module) else None
        if isinstance(backbone, FeatureExtractor):
            backbone = backbone.spec()  # saved as plain data; its weights are in the state dict
        super().__init__(**kwargs)
        block = block if block is not None else build_block(backbone)
        dim = FlowDensityModel.feature_dim(block.channels.values(), scales)
        flow = Flow(dim, kind, n_blocks, list(hidden), clamp, depth, dropout, flow_seed, position_dim)
        self.model = FlowDensityModel(block, flow, scales, n_views, view_rotation, view_brightness, view_seed,
                                      mean, std, sigma, cells, score, scale_mode, rotation_fill)
        self.rotation, self.train_views = float(rotation), max(1, int(train_views))
        self.feature_cache = ContentCache(feature_cache if self.rotation == 0 else 0)

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor]:
        return self.model(image)

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if stage == "fit" and self.hparams.get("pretrained"):
            path = pretrained_checkpoint(self.hparams.pretrained, self.categories)
            payload = torch.load(path, map_location="cpu", weights_only=True)
            check_data(payload, f"model.pretrained={path}")  # data: it may name no code off the allow-list
            saved = payload.get("anomaly_categories") or []
            if saved and not set(self.categories) <= set(saved):
                raise DataError(f"model.pretrained={path} was pre-trained on {saved}, not on {self.categories}; "
                                "give the run folder of a pre-training on these categories.")
            if "anomaly_few_shot" in payload:  # the real anomalies it trained on must stay out of this test set
                datamodule = getattr(self.trainer, "datamodule", None)
                listing = datamodule.few_shot_listing() if hasattr(datamodule, "few_shot_listing") else []
                check_same_few_shot(payload["anomaly_few_shot"], listing, self.categories, f"model.pretrained={path}")
            try:
                self.model.backbone.load_weights(str(path))
                self.feature_cache.clear()  # features of the weights before, if any
            except BackboneError as error:
                raise DataError(f"model.pretrained={path} does not hold this run's backbone "
                                f"({self.model.backbone.name} {self.model.backbone.layers}): {error}") from error

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor | None:
        # Under a synthesis strategy the density is still of normal images only: their ``source``;
        # real anomalies of ``data.few_shot_anomalies`` are skipped.
        images = batch.get("source", batch["image"])[~is_real_anomaly(batch)]
        if images.shape[0] == 0:  # only real anomalies (a short last batch): no normal image, no step
            return None
        images = images.repeat_interleave(self.train_views, dim=0)
        with torch.no_grad():
            if self.rotation == 0:  # the same features every epoch: computed once when the cache is on
                features = self.feature_cache(images, self.model.embed)
            else:
                angles = (torch.rand(images.shape[0], device=images.device) * 2 - 1) * self.rotation
                features = self.model.embed(self.model.rotate(images, angles))
        loss = self.model.cells_nll(features).mean()  # every cell a sample
        self.log("train/nll", loss, prog_bar=True, batch_size=images.shape[0])
        return loss

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        optimizer = torch.optim.Adam(self.model.flow.parameters(), lr=hp.lr, betas=tuple(hp.betas), eps=hp.eps,
                                     weight_decay=hp.weight_decay)
        schedule = hp.get("lr_schedule", "constant")
        return over_run(optimizer, schedule, self.trainer.estimated_stepping_batches if schedule != "constant" else 0)

    def restore_overrides(self) -> dict[str, Any]:
        """The backbone's weights are in the checkpoint: do not re-read them."""
        return {"backbone": {"weights": "none"}, "pretrained": None}


def pretrained_checkpoint(path: str | Path, categories: Sequence[str]) -> Path:
    """The checkpoint of ``model.pretrained`` for these categories: a file as is, or in a run folder
    ``checkpoints/<category>/best.ckpt`` (else ``last.ckpt``; ``checkpoints/`` itself for one unified model)."""
    root = Path(path).expanduser()
    if root.is_file():
        return root
    unit = categories[0] if len(categories) == 1 else ""
    for name in ("best.ckpt", "last.ckpt"):
        # a one-category run keeps its checkpoints in checkpoints/ itself, as a unified one does
        for folder in (root / "checkpoints" / unit, root / "checkpoints", root / unit, root):
            if (folder / name).is_file():
                return folder / name
    raise DataError(
        f"model.pretrained={path} holds no checkpoints/{unit or '<unit>'}/best.ckpt or last.ckpt; point it at the "
        "run folder of python -m anomaly.train model=contrastive_backbone (or at one checkpoint file)."
    )
