"""Heatmap overlays of test images: PNG files in the run folder and images in the logger."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import cv2
import lightning as L
import numpy as np
import torch
from torch import Tensor

from anomaly.data.transforms import IMAGENET_MEAN, IMAGENET_STD, denormalize
from anomaly.models.outputs import AnomalyOutput


def overlay_panel(
    image: Tensor, anomaly_map: Tensor, mask: Tensor, low: float, high: float, reconstruction: Tensor | None = None
) -> np.ndarray:
    """One row ``input | [reconstruction |] heatmap overlay | ground truth`` as uint8 RGB.

    Args:
        image: denormalised 3×H×W in [0, 1]; anomaly_map: 1×H×W; mask: 1×H×W in {0, 1}.
        low, high: the map values shown as the coldest and hottest colours.
        reconstruction: denormalised 3×H×W in [0, 1] for reconstruction methods (DiAD).
    """
    rgb = _to_uint8(image)
    scaled = ((anomaly_map[0].float().cpu().numpy() - low) / max(high - low, 1e-12)).clip(0, 1)
    heat = cv2.applyColorMap((scaled * 255).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]
    blended = (0.5 * rgb + 0.5 * heat).astype(np.uint8)
    truth = rgb.copy()
    edges = cv2.morphologyEx((mask[0].cpu().numpy() > 0).astype(np.uint8), cv2.MORPH_GRADIENT, np.ones((3, 3)))
    truth[edges > 0] = (255, 0, 0)
    middle = [_to_uint8(reconstruction)] if reconstruction is not None else []
    return np.concatenate([rgb, *middle, blended, truth], axis=1)


def _to_uint8(image: Tensor) -> np.ndarray:
    return (image.permute(1, 2, 0).float().cpu().numpy() * 255).round().astype(np.uint8)


class HeatmapWriter(L.Callback):
    """Writes ``input | [reconstruction |] heatmap | mask`` panels for ``n_images`` test images per category.

    Three quarters of the panels show the first anomalous images, a quarter the first normal ones.

    Maps of one category share one colour scale (their joint 1st–99.9th percentile), so panels are
    comparable. Panels go to ``dirpath/<category>/`` and, when the logger can show images
    (W&B, TensorBoard), to the logger.
    """

    def __init__(self, n_images: int = 8, dirpath: str | Path = "images") -> None:
        self.n_images = n_images
        self.dirpath = Path(dirpath)
        self._kept: dict[str, list[tuple[Tensor, Tensor, Tensor, str, float, int, Tensor | None]]] = defaultdict(list)

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._kept.clear()

    def on_test_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if self.n_images <= 0 or not isinstance(outputs, AnomalyOutput):
            return
        mean, std = _normalisation(trainer)
        for i, category in enumerate(batch["category"]):
            label = int(batch["label"][i])
            kept_of_label = sum(1 for entry in self._kept[category] if entry[5] == label)
            # Mostly anomalous panels (they show localisation), a quarter normal ones.
            quota = self.n_images // 4 if label == 0 else self.n_images - self.n_images // 4
            if kept_of_label >= quota:
                continue
            image = denormalize(batch["image"][i].detach().cpu(), mean, std)
            recon = outputs.reconstruction
            recon = denormalize(recon[i].detach().cpu(), mean, std) if recon is not None else None
            self._kept[category].append(
                (image, outputs.anomaly_map[i].detach().cpu(), batch["mask"][i].cpu(), batch["path"][i],
                 float(outputs.score[i]), label, recon)
            )

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        for category, kept in self._kept.items():
            values = torch.cat([entry[1].flatten() for entry in kept])
            low, high = torch.quantile(values[:: max(1, values.numel() // 1_000_000)], torch.tensor([0.01, 0.999]))
            panels, captions = [], []
            for image, anomaly_map, mask, path, score, _, recon in kept:
                panel = overlay_panel(image, anomaly_map, mask, float(low), float(high), recon)
                out = self.dirpath / category / f"{Path(path).parent.name}_{Path(path).stem}.png"
                out.parent.mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(out), panel[..., ::-1])
                panels.append(panel)
                captions.append(f"{Path(path).parent.name}/{Path(path).name} score={score:.3g}")
            _log_images(trainer, f"heatmaps/{category}", panels, captions)


def _normalisation(trainer: L.Trainer) -> tuple[tuple[float, ...], tuple[float, ...]]:
    datamodule = getattr(trainer, "datamodule", None)
    return getattr(datamodule, "mean", IMAGENET_MEAN), getattr(datamodule, "std", IMAGENET_STD)


def _log_images(trainer: L.Trainer, key: str, panels: list[np.ndarray], captions: list[str]) -> None:
    for logger in trainer.loggers:
        if hasattr(logger, "log_image"):  # W&B
            logger.log_image(key=key, images=panels, caption=captions)
        elif hasattr(getattr(logger, "experiment", None), "add_images"):  # TensorBoard
            stacked = np.stack([p.transpose(2, 0, 1) for p in panels])
            logger.experiment.add_images(key, stacked, global_step=trainer.global_step, dataformats="NCHW")
