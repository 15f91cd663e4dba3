"""RealNet (Zhang, Xu & Zhou, CVPR 2024): feature reconstruction learned from synthetic anomalies."""

from __future__ import annotations

import copy
import itertools
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import ConcatDataset, DataLoader

from anomaly.data.few_shot import is_real_anomaly
from anomaly.models.base import AnomalyModule, build_block
from anomaly.models.lr_schedules import check_schedule, over_run
from anomaly.nn.backbone import FeatureExtractor
from anomaly.nn.content_cache import ContentCache
from anomaly.nn.realnet import RealNetConfigError, RealNetModel

log = logging.getLogger(__name__)


def input_size(datamodule: Any) -> tuple[int, int] | None:
    """(H, W) of the images the data module serves (its crop, else its resize), if it says."""
    size = getattr(datamodule, "crop_size", None) or getattr(datamodule, "image_size", None)
    if size is None:
        return None
    return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))


def feature_mse(reconstructions: Sequence[Tensor], targets: Sequence[Tensor], keep: Tensor) -> Tensor:
    """Σ over layers of the mean squared error over the samples ``keep`` selects (B booleans); 0 when none is kept
    (a batch of real anomalies only)."""
    if not bool(keep.any()):
        return sum(r.float().sum() for r in reconstructions) * 0.0  # zero, on the graph (DDP sees every parameter)
    return torch.stack([F.mse_loss(r[keep].float(), f[keep]) for r, f in zip(reconstructions, targets,
                                                                              strict=True)]).sum()


class RealNet(AnomalyModule):
    """RealNet: frozen backbone, AFS-kept channels, one reconstruction UNet per layer, RRS segmentation head.

    Before the first training step, AFS scores every channel over ``afs_batches`` batches of training
    images that all carry a synthetic anomaly (``anomaly.nn.realnet.afs``) and keeps ``k`` per layer;
    scores and indices are buffers, so a checkpoint evaluates with the same channels. Training loss:
    ``seg_weight · CE(logits, mask) + mse_weight · Σ_layers MSE(R(F(anomalous)), F(source))`` with the
    batch's ``source`` the normal image the anomaly was pasted on (the MSE leaves real few-shot anomalies out).
    Map: p(anomalous) at the input size; score: max of the ``pool_size`` average-pooled map inside ``score_border``.

    Args:
        backbone: frozen feature extractor (``model.backbone.*`` node, or a module); RealNet: WRN50 layer1–4.
        k: kept channels per backbone layer (RealNet: 256, 512, 512, 256).
        selection: ``afs`` or ``random`` (the same number of channels, drawn with ``selection_seed``).
        afs_batches: synthetic batches AFS averages over (RealNet: 64).
        width_ratio, channel_mult, num_res_blocks, attention_levels: the reconstruction UNets.
        k_max, k_mean, num_residual_layers: RRS (RealNet: 256, 256, 2).
        pool_size: average-pool side of the image score (RealNet: 16 at 256 px).
        score_border: map pixels at each edge the image score ignores (RealNet: 0; see ``RealNetModel``).
        normalize: divide each layer's kept features by their RMS over the normal source images of the
            AFS batches (a stored constant per layer). Not in the paper, whose WRN50 features have an RMS
            near 1: the default for backbones whose features are far larger (EfficientNet-Lite0 ≈ 10);
            ``false`` feeds raw features as the paper.
        seg_weight, mse_weight: loss weights (1, 1).
        lr, betas: Adam (RealNet: 1e-4, (0.9, 0.999)).
        lr_schedule: ``constant`` (RealNet) or ``cosine`` (to 0 over the run's steps: not in the paper, for
            short runs whose last checkpoints should come from a small learning rate).
        feature_cache: keep the kept-channel features of up to this many distinct normal training images in
            memory (``anomaly.nn.content_cache``; keyed by the image's content, so never stale): the frozen
            backbone then runs once per training image for the MSE targets, and in later epochs only on the
            images the synthesis changed (an image it left normal reuses its source's features). 0 = off.
        **kwargs: ``AnomalyModule`` options (evaluator, calibrate).
    """

    def __init__(
        self,
        backbone: FeatureExtractor | Mapping[str, Any],
        k: Sequence[int] = (256, 512, 512, 256),
        selection: str = "afs",
        selection_seed: int = 0,
        afs_batches: int = 64,
        width_ratio: float = 0.5,
        channel_mult: Sequence[int] = (1, 2, 4),
        num_res_blocks: int = 2,
        attention_levels: Sequence[int] = (2, 4),
        k_max: int = 256,
        k_mean: int = 256,
        num_residual_layers: int = 2,
        pool_size: int = 16,
        score_border: int = 0,
        normalize: bool = False,
        seg_weight: float = 1.0,
        mse_weight: float = 1.0,
        lr: float = 1e-4,
        betas: Sequence[float] = (0.9, 0.999),
        lr_schedule: str = "constant",
        feature_cache: int = 0,
        **kwargs: Any,
    ) -> None:
        check_schedule(lr_schedule, RealNetConfigError)
        if int(afs_batches) < 1:
            raise RealNetConfigError(f"model.afs_batches={afs_batches} must be at least 1.")
        block = backbone if isinstance(backbone, nn.Module) else None
        if isinstance(backbone, FeatureExtractor):
            backbone = backbone.spec()  # saved as plain data; its weights are in the state dict
        super().__init__(**kwargs)
        block = block if block is not None else build_block(backbone)
        self.model = RealNetModel(block, list(k), selection, selection_seed, width_ratio, list(channel_mult),
                                  num_res_blocks, list(attention_levels), k_max, k_mean, num_residual_layers,
                                  pool_size, score_border)
        self.afs_seconds: float | None = None
        self.feature_cache = ContentCache(feature_cache)

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor]:
        return self.model(image)

    def finish_map(self, raw_map: Tensor) -> tuple[Tensor, Tensor]:
        """A (calibrated) map and its pooled-max score."""
        return raw_map, self.model.score(raw_map)

    # -- before training ----------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        """Refuse runs RealNet cannot learn from (no synthesis, a size the UNets cannot halve); fill an
        SDAS bank that is missing or short here, in the main process."""
        super().setup(stage)
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if datamodule is None:
            return
        size = input_size(datamodule)
        if size is not None:
            option = "data.crop_size" if getattr(datamodule, "crop_size", None) else "data.image_size"
            self.model.check_image_size(*size, option=option)
        if stage != "fit":
            return
        synthesis = getattr(datamodule, "synthesis", None)
        if synthesis is None:
            raise RealNetConfigError(
                "RealNet learns from synthetic anomalies and cannot train with synthesis=none; set synthesis=perlin, "
                "synthesis=cutpaste or synthesis=sdas.")
        prepare = getattr(synthesis, "prepare", None)
        if callable(prepare):
            prepare(self.categories)

    def on_fit_start(self) -> None:
        """Run AFS (and fit ``normalize``'s scales) once; a resumed or loaded model keeps its channels."""
        selection, model = self.model.selection, self.model
        run_afs = selection.selection == "afs" and not bool(selection.fitted)
        run_scale = bool(self.hparams.normalize) and not bool(model.scale_fitted)
        if not (run_afs or run_scale):
            return
        start = time.perf_counter()
        batches = int(self.hparams.afs_batches)
        squares = [torch.zeros(c, device=self.device, dtype=torch.float64) for c in selection.channels]
        count = torch.zeros((), device=self.device, dtype=torch.float64)
        for batch in itertools.islice(self._anomalous_batches(), batches):
            image, source = batch["image"].to(self.device), batch["source"].to(self.device)
            with torch.no_grad():
                features = model.backbone(torch.cat([image, source]))
            layers = [features[layer].float() for layer in model.backbone.layers]
            n = image.shape[0]
            if run_afs:
                selection.accumulate([f[:n] for f in layers], [f[n:] for f in layers], batch["mask"].to(self.device))
            for total, f in zip(squares, layers, strict=True):
                total += f[n:].double().pow(2).mean((2, 3)).sum(0)
            count += n
        reduce = self.trainer.strategy.reduce if self.trainer.world_size > 1 else (lambda t, reduce_op: t)
        if run_afs:
            selection.finish([reduce(selection.scores(i), reduce_op="mean") for i in range(len(selection.k))])
        if run_scale:
            for i, total in enumerate(squares):
                mean_square = reduce(total, reduce_op="sum") / reduce(count, reduce_op="sum")
                model.feature_scale[i] = mean_square[selection.indices(i)].mean().sqrt().float().clamp_min(1e-6)
            model.scale_fitted.fill_(True)
        self.afs_seconds = time.perf_counter() - start
        self.feature_cache.clear()  # features kept under earlier channels or scales, if any
        log.info("%s: %d synthetic batches in %.1f s; kept %s channels of %s; feature scales %s.",
                 "AFS" if run_afs else f"{selection.selection} channels, feature scales", batches,
                 self.afs_seconds, selection.k, list(model.backbone.layers),
                 [round(float(v), 3) for v in model.feature_scale])

    def _anomalous_batches(self) -> Iterator[dict[str, Any]]:
        """Training batches in which every image carries a synthetic anomaly (as the official AFS), repeated."""
        datamodule = self.trainer.datamodule
        dataset = datamodule.dataset("train")
        if isinstance(dataset, ConcatDataset):  # data.few_shot_anomalies: AFS scores the synthetic part only
            dataset = dataset.datasets[0]
        always = copy.copy(dataset.synthesis)
        always.normal_probability = 0.0
        dataset.synthesis = always
        loader = DataLoader(dataset, batch_size=datamodule.batch_size, shuffle=True, num_workers=datamodule.num_workers,
                            generator=torch.Generator().manual_seed(int(torch.initial_seed()) % 2**63))
        while True:
            yield from loader

    # -- training -----------------------------------------------------------------------------------
    def losses(self, batch: Mapping[str, Any]) -> dict[str, Tensor]:
        """``seg``: 2-class cross-entropy of the logits against the mask; ``mse``: Σ over layers of the MSE between
        the reconstruction of the anomalous image's features and the normal source's features, over the synthetic
        and normal samples only (a real anomaly of ``data.few_shot_anomalies`` is its own source: its MSE would
        teach the UNets to reproduce the defect)."""
        image, mask, source = batch["image"], batch["mask"], batch.get("source")
        if source is None:
            raise RealNetConfigError("RealNet's training batches need their normal `source` images: train with "
                                     "synthesis=perlin, synthesis=cutpaste or synthesis=sdas.")
        anomalous, normal = self.training_features(image, source)
        reconstruction = self.model.reconstruct(anomalous)
        logits = self.model.logits(reconstruction.residuals, tuple(image.shape[-2:]))
        seg = F.cross_entropy(logits.float(), mask[:, 0].long())
        return {"seg": seg, "mse": feature_mse(reconstruction.reconstructions, normal, ~is_real_anomaly(batch))}

    def training_features(self, image: Tensor, source: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """Kept features of the (anomalous) images and of their normal sources, per layer. With
        ``feature_cache`` the sources' come from the cache and only the images the synthesis changed go
        through the backbone; without it both run in one batch."""
        n = image.shape[0]
        if self.feature_cache.size <= 0:
            features = self.model.kept_features(torch.cat([image, source]))
            return [f[:n] for f in features], [f[n:] for f in features]
        shapes = self.model.feature_shapes(*source.shape[-2:])
        flat = self.feature_cache(source, lambda x: torch.cat([f.flatten(1) for f in self.model.kept_features(x)], 1))
        sizes = [c * h * w for c, h, w in shapes]
        normal = [part.reshape(n, *shape) for part, shape in zip(flat.split(sizes, dim=1), shapes, strict=True)]
        changed = ~(image == source).flatten(1).all(1)
        anomalous = [f.clone() for f in normal]
        if changed.any():
            for target, fresh in zip(anomalous, self.model.kept_features(image[changed]), strict=True):
                target[changed] = fresh
        return anomalous, normal

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        losses = self.losses(batch)
        loss = float(self.hparams.seg_weight) * losses["seg"] + float(self.hparams.mse_weight) * losses["mse"]
        n = batch["image"].shape[0]
        self.log_dict({f"train/{k}": v for k, v in losses.items()}, batch_size=n)
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        return loss

    def configure_optimizers(self) -> Any:
        params = itertools.chain(self.model.unets.parameters(), self.model.rrs.parameters())
        # fused: one kernel per step over all parameters (CPU and CUDA), 36 → 10 ms a step on the CPU preset here
        optimizer = torch.optim.Adam(params, lr=float(self.hparams.lr), betas=tuple(self.hparams.betas),
                                     fused=self.device.type in ("cpu", "cuda"))
        schedule = self.hparams.get("lr_schedule", "constant")
        return over_run(optimizer, schedule, self.trainer.estimated_stepping_batches if schedule != "constant" else 0)

    def restore_overrides(self) -> dict[str, Any]:
        """The backbone's weights are in the checkpoint: do not re-read them."""
        return {"backbone": {"weights": "none"}}
