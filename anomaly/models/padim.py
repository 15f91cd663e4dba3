"""PaDiM as a LightningModule: one statistics-gathering epoch through ``Trainer.fit``."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from anomaly.models.base import AnomalyModule, UnfittedModelError, build_block
from anomaly.models.outputs import AnomalyOutput
from anomaly.nn.backbone import FeatureExtractor
from anomaly.nn.gaussian import PositionalGaussian
from anomaly.nn.padim import PadimModel

#: Trainer precisions under which a fit's embeddings can be computed here as ``Trainer.fit`` computes them.
CROSS_FIT_PRECISIONS = ("32-true", "16-mixed", "bf16-mixed")


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

    def cross_fit_outputs(self, data: Any, trainer: L.Trainer) -> Iterator[tuple[Mapping[str, Any], AnomalyOutput]] | None:
        """Leave-fold-out outputs from sums, in about two backbone passes instead of a refit per fold.

        One pass sums every training image (as ``training_step`` does, under ``trainer``'s precision); then,
        fold by fold, the fold's embeddings are summed about the same shift, the total minus them is
        finalized (:meth:`PositionalGaussian.complement`) and scores them. Memory: two P×d×d blocks (the
        total's and the fold's) and one fold's embeddings. ``None`` (refit copies instead) with a per-pixel
        calibration, another precision, capped training batches or several processes."""
        capped = trainer.max_steps != -1 or trainer.limit_train_batches not in (1.0, None)
        if (self.calibration is not None or trainer.precision not in CROSS_FIT_PRECISIONS or capped
                or trainer.world_size != 1 or not trainer.max_epochs):
            return None
        return self._cross_fit_outputs(data, trainer)

    def _cross_fit_outputs(self, data: Any, trainer: L.Trainer) -> Iterator[tuple[Mapping[str, Any], AnomalyOutput]]:
        plugin, device, before = trainer.precision_plugin, trainer.strategy.root_device, self.device
        mixed = trainer.precision != "32-true"  # fits embed under autocast, scoring in float32: embed twice

        def fit_embedding(image: torch.Tensor) -> torch.Tensor:
            with plugin.train_step_context():
                return self.model.embed(plugin.convert_input(image.to(device)))

        own = self.model.gaussian
        total = PositionalGaussian(own.positions, own.dim, own.epsilon).to(device)
        self.to(device)
        try:
            with torch.inference_mode():
                for batch in data.normal_train_dataloader():
                    total.accumulate(fit_embedding(batch.get("source", batch["image"])))
            for fold in range(data.calibration_folds()):
                held_out = data.without_calibration_fold(fold)
                if not held_out.calibration_fold(fold):
                    continue
                with torch.inference_mode():
                    left = PositionalGaussian(own.positions, own.dim, own.epsilon).to(device)
                    left.start(total.shift)
                    kept = []
                    for batch in held_out.calibration_dataloader():
                        embedding = fit_embedding(batch["image"])
                        left.accumulate(embedding)
                        kept.append((batch, self.model.embed(batch["image"].to(device)) if mixed else embedding))
                    left.complement(total)
                    left.finalize()
                    outputs = [(batch, AnomalyOutput(*self.model.score_embedding(e, left))) for batch, e in kept]
                    del left, kept
                yield from outputs
        finally:
            self.to(before)

    def restore_overrides(self) -> dict[str, Any]:
        """The backbone's weights are in the checkpoint: do not re-read them."""
        return {"backbone": {"weights": "none"}}

    def configure_optimizers(self) -> None:
        return None
