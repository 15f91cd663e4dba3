"""Contrastive pre-training of the dense flow's feature extractor (Zhang et al., 2023): ``model=contrastive_backbone``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from anomaly.data.few_shot import is_real_anomaly
from anomaly.models.base import AnomalyModule, build_block
from anomaly.nn.backbone import FeatureExtractor
from anomaly.nn.contrastive import ContrastiveEmbedder, exponential_triplet_loss, interpolate_negatives


class ContrastiveBackbone(AnomalyModule):
    """Fine-tunes a backbone so that normal images embed close together and anomalous ones far away.

    Siamese branches (one embedder, shared weights) see each step's normal images (the batch's
    ``source``) and its anomalies: the synthesis group's simulated ones (``synthesis=cutpaste_perlin``:
    CutPaste and Perlin together, as the paper) and the real few-shot ones (``data.few_shot_anomalies``).
    Negatives are augmented at feature level (``interpolation_ratio``), the loss is the
    exponential-kernel triplet loss (``anomaly.nn.contrastive``). The flow then reads the fine-tuned
    backbone: ``python -m anomaly.train experiment=cdflow_cpu model.pretrained=<this run's folder>``.

    Its checkpoints record the real anomalies it trained on (``anomaly_few_shot``, as ``few_shot.json``): a
    flow reading them refuses to hold out others, so none of them can land in the flow's test set.

    Score (for selecting the checkpoint on the validation split): the normalised distance of an
    image's embedding to the centre of the normal training embeddings, refitted before every
    validation. There is no localisation: the map is the score everywhere (image metrics only).

    Args:
        backbone: the feature extractor (``model.backbone.*``), the one the flow will use.
        head: widths of the projection head (FC layers after the pooled features).
        train_layers: backbone parameter-name prefixes to fine-tune (``[]`` = all).
        sigma, margin: the kernel width σ and margin m of the triplet loss.
        interpolation_ratio: new interpolated negatives per original one (< 0.5, the paper).
        lr, head_lr, weight_decay: Adam on the backbone and on the head.
        **kwargs: ``AnomalyModule`` options (evaluator, calibrate).
    """

    def __init__(
        self,
        backbone: FeatureExtractor | Mapping[str, Any],
        head: Sequence[int] = (512, 128),
        train_layers: Sequence[str] = (),
        sigma: float = 1.0,
        margin: float = 0.5,
        interpolation_ratio: float = 0.25,
        lr: float = 1e-4,
        head_lr: float = 1e-3,
        weight_decay: float = 0.0,
        **kwargs: Any,
    ) -> None:
        interpolate_negatives(torch.zeros(0, 1), interpolation_ratio)  # the ratio is checked before anything is read
        block = backbone if isinstance(backbone, torch.nn.Module) else None
        if isinstance(backbone, FeatureExtractor):
            backbone = backbone.spec()
        super().__init__(**kwargs)
        block = block if block is not None else build_block(backbone)
        self.model = ContrastiveEmbedder(block, head, train_layers)
        self.register_buffer("center", torch.zeros(int(head[-1])))
        self.few_shot: list[dict[str, Any]] = []  # the real anomalies of the training split (few_shot.json)

    def setup(self, stage: str) -> None:
        super().setup(stage)
        datamodule = getattr(self.trainer, "datamodule", None)
        if stage == "fit" and hasattr(datamodule, "few_shot_listing"):
            self.few_shot = list(datamodule.few_shot_listing())

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["anomaly_few_shot"] = [dict(entry) for entry in self.few_shot]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        self.few_shot = list(checkpoint.get("anomaly_few_shot") or [])

    def embed(self, image: Tensor) -> Tensor:
        return self.model(image)

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor]:
        """``(map, score)``: score = ‖z/‖z‖ − c/‖c‖‖ to the normal centre c; the map is the score everywhere."""
        z = self.model(image)
        score = (F.normalize(z, dim=1) - F.normalize(self.center, dim=0)).norm(dim=1)
        return score.view(-1, 1, 1, 1).expand(-1, 1, *image.shape[-2:]).contiguous(), score

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor | None:
        """The triplet loss of the batch; ``None`` (the step is skipped) for a batch without 2 normal
        images and 1 anomaly (e.g. a short last batch)."""
        real = is_real_anomaly(batch)
        source = batch.get("source", batch["image"])
        normal = source[~real]
        anomalous = batch["image"][(batch["label"] == 1) | real]
        if normal.shape[0] < 2 or anomalous.shape[0] < 1:
            return None
        z = self.model(torch.cat([normal, anomalous]))
        positives, negatives = z[: normal.shape[0]], z[normal.shape[0]:]
        negatives = interpolate_negatives(negatives, self.hparams.interpolation_ratio)
        loss = exponential_triplet_loss(positives, negatives, self.hparams.sigma, self.hparams.margin)
        self.log("train/triplet", loss, prog_bar=True, batch_size=z.shape[0])
        return loss

    def on_validation_epoch_start(self) -> None:
        self.fit_center()
        super().on_validation_epoch_start()

    @torch.no_grad()
    def fit_center(self) -> None:
        """The centre of the normalised embeddings of the normal training images (current weights)."""
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is None or not hasattr(datamodule, "normal_train_dataloader"):
            return
        total, count = torch.zeros_like(self.center), 0
        for batch in datamodule.normal_train_dataloader():
            keep = ~is_real_anomaly(batch)
            image = batch.get("source", batch["image"])[keep.cpu()].to(self.device)
            if image.shape[0]:
                total += F.normalize(self.model(image), dim=1).sum(0)
                count += image.shape[0]
        if count:
            self.center.copy_(total / count)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        hp = self.hparams
        backbone = [p for p in self.model.backbone.parameters() if p.requires_grad]
        groups = [{"params": self.model.head.parameters(), "lr": hp.head_lr}]
        if backbone:
            groups.append({"params": backbone, "lr": hp.lr})
        return torch.optim.Adam(groups, weight_decay=hp.weight_decay)

    def restore_overrides(self) -> dict[str, Any]:
        """The backbone's weights are in the checkpoint: do not re-read them."""
        return {"backbone": {"weights": "none"}}
