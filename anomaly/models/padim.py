"""PaDiM as a LightningModule: one statistics-gathering epoch through ``Trainer.fit``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from anomaly.models.base import AnomalyModule, UnfittedModelError, build_block
from anomaly.nn.backbone import FeatureExtractor
from anomaly.nn.padim import PadimModel


class Padim(AnomalyModule):
    """PaDiM (Defard et al., ICPR 2020): per-patch Gaussians over pretrained CNN features.

    Fitting accumulates sums over one epoch (no optimiser; memory independent of the number of
    training images); the Gaussians are finalised at the end of the epoch, summed across DDP
    processes. Extra epochs refit from scratch and give the same model.

    Args:
        backbone: frozen feature extractor (``model.backbone.*``: a config node, or a module).
        input_size: side or (height, width) of the images fed to the model (after any crop).
        n_features: random channel subset size (R18-Rd100: 100; WR50-Rd550: 550).
        epsilon: covariance ridge; sigma: map blur; seed: channel subset seed.
        **kwargs: ``AnomalyModule`` options (evaluator, calibrate).
    """

    refit_after_calibration = True  # one epoch of sums: refitting on all normal images costs one more epoch

    def __init__(
        self,
        backbone: FeatureExtractor | Mapping[str, Any],
        input_size: int | Sequence[int] = 224,
        n_features: int | None = 100,
        epsilon: float = 0.01,
        sigma: float = 4.0,
        seed: int = 0,
        chunk: int = 1024,
        **kwargs: Any,
    ) -> None:
        block = backbone if isinstance(backbone, nn.Module) else None
        if isinstance(backbone, FeatureExtractor):
            # The base class saves the constructor's arguments as they are now: plain data that rebuilds
            # the extractor, not the module (whose weights the state dict already holds).
            backbone = backbone.spec()
        super().__init__(**kwargs)
        size = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
        block = block if block is not None else build_block(backbone)
        self.model = PadimModel(block, size, n_features, epsilon, sigma, seed, chunk)
        self.automatic_optimization = False

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor]:
        if not bool(self.model.gaussian.fitted):
            raise UnfittedModelError(
                "PaDiM has no fitted statistics: train it first (one epoch over normal images) or test a "
                "trained checkpoint (ckpt_path=...)."
            )
        return self.model(image)

    def on_train_epoch_start(self) -> None:
        self.model.gaussian.reset()
        self._pending = True

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        # Under a synthesis strategy the Gaussians still describe normal images only: its ``source``.
        images = batch.get("source", batch["image"])
        with torch.no_grad():
            self.model.gaussian.accumulate(self.model.embed(images))

    def _finalize(self) -> None:
        """Turn the epoch's sums into the Gaussians once (Lightning validates before the epoch ends)."""
        if getattr(self, "_pending", False):
            self.model.gaussian.finalize(reduce=self.trainer.world_size > 1)
            self._pending = False

    def on_validation_epoch_start(self) -> None:
        self._finalize()
        super().on_validation_epoch_start()

    def on_train_epoch_end(self) -> None:
        self._finalize()

    def restore_overrides(self) -> dict[str, Any]:
        """The backbone's weights are in the checkpoint: do not re-read them."""
        return {"backbone": {"weights": "none"}}

    def configure_optimizers(self) -> None:
        return None
