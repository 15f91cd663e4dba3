"""``DDPM``: a class-conditional diffusion model of the normal training images (the generator of SDAS).

Not an anomaly detector: a plain LightningModule trained by ``python -m anomaly.train model=ddpm``.
Class label = index of the sample's category in ``categories``, which come from the constructor or,
when left ``None``, from ``trainer.datamodule.categories``. The checkpoint's hyper-parameters hold the
category list and the image size, so ``python -m anomaly.synthesize ckpt_path=...`` rebuilds the net.
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule

from anomaly.config.targets import check_data
from anomaly.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from anomaly.models.base import plain
from anomaly.models.guards import check_finite_loss
from anomaly.models.lr_schedules import check_schedule, over_run
from anomaly.nn.ddpm import DDPMConfigError, build_scheduler, build_unet, diffusion_loss
from anomaly.nn.ema import ModuleEMA

_OLD_EMA = "ema_unet."  # checkpoints written before the shared EMA block
_EMA = "ema.average."


def upgrade_state(state: dict[str, Any], global_step: int) -> dict[str, Any]:
    """A state dict of an older DDPM checkpoint (EMA copy under ``ema_unet.``) in today's keys, in place."""
    old = [k for k in state if k.startswith(_OLD_EMA)]
    for key in old:
        state[f"{_EMA}module.unet.{key[len(_OLD_EMA):]}"] = state.pop(key)
    if old:
        state[f"{_EMA}n_averaged"] = torch.tensor(max(int(global_step), 1), dtype=torch.long)
    return state


class DDPM(LightningModule):
    """Class-conditional DDPM trained on normal images (ε-MSE, + hybrid VLB when the variance is learned).

    Args:
        categories: class names in label order; ``None`` = take them from the data module at fit time.
        image_size: training image side (int or [H, W]); ``None`` = ``datamodule.image_size``.
        unet: ``{"preset": "cpu"|"paper"|"tiny", **UNet2DModel overrides}``.
        learned_variance: learn Σ (``learned_range``, hybrid loss) or use ``fixed_small``.
        num_train_timesteps: diffusion steps T (1000).
        beta_schedule: diffusers beta schedule name (``linear``).
        vlb_weight: weight of the VLB term of the hybrid loss (1.0 = guided-diffusion at T = 1000).
        lr: Adam learning rate. weight_decay: Adam weight decay.
        lr_schedule: ``constant`` (guided-diffusion) or ``cosine`` (to 0 over the run's steps, set
            by ``trainer.max_steps``: a short run ends much closer to its best).
        ema_decay: decay of the EMA of the UNet used for sampling (``None`` = no EMA; warm-up
            ``min(decay, (1+n)/(10+n))`` after n updates; ``anomaly.nn.ema.ModuleEMA``).
        pixel_mean, pixel_std: the data module's normalisation, undone to get images in [-1, 1].
    """

    def __init__(self, categories: Sequence[str] | None = None, image_size: int | Sequence[int] | None = None,
                 unet: dict[str, Any] | None = None, learned_variance: bool = True,
                 num_train_timesteps: int = 1000, beta_schedule: str = "linear", vlb_weight: float = 1.0,
                 lr: float = 1e-4, weight_decay: float = 0.0, lr_schedule: str = "constant",
                 ema_decay: float | None = 0.9999,
                 pixel_mean: Sequence[float] = IMAGENET_MEAN, pixel_std: Sequence[float] = IMAGENET_STD) -> None:
        super().__init__()
        check_schedule(lr_schedule, DDPMConfigError)
        self.save_hyperparameters()
        self.hparams["categories"] = list(plain(categories)) if categories is not None else None
        self.hparams["image_size"] = plain(image_size)
        self.hparams["unet"] = dict(plain(unet) or {"preset": "cpu"})
        self.hparams["pixel_mean"], self.hparams["pixel_std"] = list(plain(pixel_mean)), list(plain(pixel_std))
        self.scheduler = build_scheduler(num_train_timesteps, beta_schedule, learned_variance)
        self.unet = None
        self.ema: ModuleEMA | None = None
        self._last_ema_step = -1
        if self.hparams.categories and self.hparams.image_size is not None:
            self._build()

    # ------------------------------------------------------------------ construction
    @property
    def categories(self) -> list[str]:
        """Class names in label order."""
        return list(self.hparams.categories or [])

    def _build(self) -> None:
        unet_kwargs = dict(self.hparams.unet)
        preset = unet_kwargs.pop("preset", "cpu")
        self.unet = build_unet(len(self.categories), self.hparams.image_size, preset,
                               self.hparams.learned_variance, **unet_kwargs)
        if self.hparams.ema_decay is not None:
            self.ema = ModuleEMA({"unet": self.unet}, float(self.hparams.ema_decay), warmup=True)
        self._index = {c: i for i, c in enumerate(self.categories)}

    def setup(self, stage: str) -> None:
        """Take categories / image size from the data module when they were not given, then build the UNet."""
        if self.unet is not None:
            return
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if not self.hparams.categories:
            cats = getattr(dm, "categories", None)
            if not cats:
                raise DDPMConfigError("The DDPM needs its category list: set model.categories or use a data "
                                      "module with a `categories` attribute.")
            self.hparams["categories"] = [str(c) for c in cats]
        if self.hparams.image_size is None:
            size = getattr(dm, "image_size", None)
            if size is None:
                raise DDPMConfigError("The DDPM needs the training image size: set model.image_size.")
            self.hparams["image_size"] = plain(size)
        self._build()

    def configure_optimizers(self) -> Any:
        """Adam over the UNet (the EMA's copy is not optimised), optionally cosine-decayed."""
        optimizer = torch.optim.Adam(self.unet.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        return over_run(optimizer, self.hparams.get("lr_schedule", "constant"), self.trainer.estimated_stepping_batches)

    # ------------------------------------------------------------------ training
    def to_model_range(self, image: torch.Tensor) -> torch.Tensor:
        """Undo the data module's normalisation: B×3×H×W normalised → [-1, 1]."""
        mean = torch.tensor(self.hparams.pixel_mean, device=image.device, dtype=image.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.hparams.pixel_std, device=image.device, dtype=image.dtype).view(1, 3, 1, 1)
        return ((image * std + mean) * 2 - 1).clamp(-1, 1)

    def labels_of(self, categories: Sequence[str]) -> torch.Tensor:
        """Class indices of category names (clear error for an unknown one)."""
        unknown = sorted({c for c in categories if c not in self._index})
        if unknown:
            raise DDPMConfigError(f"Categories {unknown} are not among model.categories={self.categories}; "
                                  "train on the data the model was built for.")
        return torch.tensor([self._index[c] for c in categories], device=self.device, dtype=torch.long)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor | None:
        """Hybrid diffusion loss on the normal images of the batch (synthetic anomalies are skipped)."""
        image = batch["image"]
        keep = torch.ones(image.shape[0], dtype=torch.bool, device=image.device)
        if "label" in batch:
            keep &= torch.as_tensor(batch["label"], device=image.device) == 0
        if "mask" in batch:
            keep &= batch["mask"].flatten(1).amax(1) == 0
        if not bool(keep.any()):
            return None
        size = self.hparams.image_size
        hw = (size, size) if isinstance(size, int) else tuple(size)
        if tuple(image.shape[-2:]) != tuple(hw):
            raise DDPMConfigError(f"model.image_size={list(hw)} but the data loader gives "
                                  f"{list(image.shape[-2:])} images; set data.image_size to match.")
        cats = [c for c, k in zip(batch["category"], keep.tolist(), strict=True) if k]
        losses = diffusion_loss(self.unet, self.scheduler, self.to_model_range(image[keep]), self.labels_of(cats),
                                self.hparams.vlb_weight)
        self.log_dict({f"train/{k}": v.detach() for k, v in losses.items()}, prog_bar=True,
                      batch_size=int(keep.sum()))
        return losses["loss"]

    def on_before_backward(self, loss: torch.Tensor) -> None:
        """The project's one non-finite-loss guard."""
        check_finite_loss(self, loss)

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        """Step, then fold the new weights into the EMA — once per optimizer step, before any
        callback (the checkpoint) runs."""
        super().optimizer_step(*args, **kwargs)
        if self.ema is not None and self.global_step != self._last_ema_step:
            self.ema.update()
            self._last_ema_step = self.global_step

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse to resume from a checkpoint trained on other categories (a class-count mismatch)."""
        theirs = list((checkpoint.get("hyper_parameters") or {}).get("categories") or [])
        if theirs and theirs != self.categories:
            raise DDPMConfigError(f"ckpt_path was trained on {len(theirs)} categories {theirs}, but this run has "
                                  f"{len(self.categories)} {self.categories}; resume with the same data "
                                  "categories or train from scratch (ckpt_path=null).")
        upgrade_state(checkpoint.get("state_dict") or {}, int(checkpoint.get("global_step", 0)))

    def sampling_unet(self, use_ema: bool = True) -> torch.nn.Module:
        """The net to sample with: the EMA's copy of the UNet when there is one and ``use_ema``."""
        return self.ema.averaged("unet") if (use_ema and self.ema is not None) else self.unet

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, path: str | Path, option: str = "ckpt_path", map_location: str = "cpu") -> DDPM:
        """Load a DDPM checkpoint with one-sentence errors naming ``option`` for the usual mistakes."""
        path = Path(path).expanduser()
        if not path.is_file():
            raise DDPMConfigError(f"{option}={path} does not exist; pass the .ckpt written by "
                                  "`python -m anomaly.train model=ddpm`.")
        try:
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as error:
            raise DDPMConfigError(
                f"{option}={path} is not a readable checkpoint ({type(error).__name__}: not a torch.save file, or one "
                "holding objects other than tensors and plain data); pass one written by `python -m anomaly.train model=ddpm`."
            ) from error
        check_data(ckpt, f"{option}={path}")  # data: it may name no code off the allow-list
        hp = dict(ckpt.get("hyper_parameters") or {})
        state = ckpt.get("state_dict") or {}
        if not hp.get("categories") or "unet.class_embedding.weight" not in state:
            raise DDPMConfigError(f"{option}={path} is not a DDPM checkpoint (no category list or class "
                                  "embedding); pass one written by `python -m anomaly.train model=ddpm`.")
        n_embed = state["unet.class_embedding.weight"].shape[0]
        if n_embed != len(hp["categories"]):
            raise DDPMConfigError(f"{option}={path} has a UNet with {n_embed} classes but lists "
                                  f"{len(hp['categories'])} categories; the checkpoint is inconsistent, retrain it.")
        model = cls(**{k: v for k, v in hp.items() if not k.startswith("_")})
        model.load_state_dict(upgrade_state(dict(state), int(ckpt.get("global_step", 0))))
        return model.eval()
