"""DiAD (He et al., AAAI 2024): latent diffusion reconstruction steered by a semantic-guided branch."""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from anomaly.models.base import AnomalyModule, build_block, plain
from anomaly.models.lr_schedules import cosine_to_zero, linear_warmup, per_step
from anomaly.models.outputs import AnomalyOutput
from anomaly.nn.diffusion import (
    Conditioning,
    ControlledDenoiser,
    SemanticGuidedBranch,
    architecture_of,
    build_unet,
    ddim_reconstruct,
    make_scheduler,
    q_sample,
)
from anomaly.nn.diffusion.context import CONSTANT as CONSTANT_CONTEXTS
from anomaly.nn.diffusion.latents import Latent, LatentContext, build_latent
from anomaly.nn.diffusion.presets import DiffusionConfigError
from anomaly.nn.diffusion.sampling import check_t_start, denoising_target, sample_timesteps
from anomaly.nn.diffusion.unet import downsampling as unet_downsampling
from anomaly.nn.diffusion.unet import train_encoder_of
from anomaly.nn.ema import ModuleEMA
from anomaly.nn.feature_distance import FeatureDistance

# The paper's latent when a caller gives none (configs always give model.latent).
DEFAULT_LATENT = {"_target_": "anomaly.nn.diffusion.latents.AutoencoderLatent", "preset": "kl-f8", "fit_steps": 3000}


def check_image_size(size: int | Sequence[int], factor: int) -> None:
    """Every image side must be a multiple of ``factor`` (autoencoder × UNet downsampling)."""
    sides = [size, size] if isinstance(size, int) else list(size)
    for side in sides:
        if int(side) % factor:
            lower = int(side) // factor * factor
            near = f"{lower} or {lower + factor}" if lower else str(factor)
            raise DiffusionConfigError(
                f"data.image_size/crop_size={side} does not fit DiAD: image sides must be multiples of {factor} "
                f"(latent downsampling × 2^UNet levels); use e.g. {near}."
            )


class DiAD(AnomalyModule):
    """Reconstruct the image through a controlled latent diffusion model; score feature differences.

    Training: ε-MSE on latents of normal images; only the SG branch (ControlNet copy, hint encoder,
    zero convs, SFF), the UNet decoder + output head and a learned context are trained (the whole
    UNet when it has no pretrained weights: ``unet.train_encoder=auto``). With a synthesis strategy
    (``synthesis=perlin`` …) the noisy latent and the hint come from the synthetic anomaly and the
    target from its normal source, so the denoiser learns to repair. Inference: encode, noise to
    ``t_start``, ``n_steps`` DDIM steps with the image as hint at every step (no classifier-free
    guidance), decode, and compare pretrained features (``FeatureDistance``) as the latent kind says.

    The latent is a block chosen by ``model.latent._target_`` (``anomaly.nn.diffusion.latents``):
    ``AutoencoderLatent`` (the paper's KL autoencoder, optionally fitted in the first steps) or
    ``FeatureLatent`` (the scoring backbone's standardised features; not in the paper). DiAD talks
    to it only through the ``Latent`` interface.

    Args:
        backbone: frozen feature extractor for scoring (a ``model.backbone`` node or module).
        input_size: side or (height, width) the model sees, checked against the downsampling.
        latent: a ``model.latent`` node (``_target_`` + that kind's options).
        unet: ``build_unet`` arguments: ``preset`` (``sd15``|``cpu``), ``weights``, overrides, and
            ``train_encoder`` (``auto``: train the whole UNet when it has no pretrained weights).
        control: ``mid`` (official) or ``all``; sff: use the SFF block; sff_input: what SFF reads,
            ``features`` (trainable from step one, the default) or ``zero_conv`` (the official wiring,
            which never leaves zero under ``control=mid``; see ``anomaly/nn/diffusion/control.py``).
        context: ``Conditioning`` arguments (``kind``: empty|clip_empty|file|learned|class, ...).
        scheduler: ``DDIMScheduler`` overrides of SD-1.5's schedule.
        t_start, n_steps: inference noising step and DDIM steps.
        t_train_max: train on timesteps below this only (``None``: the whole schedule, the paper).
        lr, weight_decay, warmup_steps: AdamW and a linear warm-up of the diffusion phase.
        ema, ema_decay: keep an EMA of the trained weights and evaluate with it.
        scoring: ``FeatureDistance`` options (``layers``, ``sigma``, ``pool_size``, ``pool_iters``,
            ``resize``, ``distance``).
        calibrate: z-score test maps per pixel against the category's normal training maps.
        compile: ``torch.compile`` the UNet and the ControlNet.
        download: allow fetching hub ids of the UNet's, the autoencoder's or the text encoder's weights.
        seed: seed of the inference noise (per image, from its content: batch-independent).
        **kwargs: ``AnomalyModule`` options (evaluator).
    """

    def __init__(
        self,
        backbone: Any,
        input_size: int | Sequence[int] = 256,
        latent: Mapping[str, Any] | None = None,
        unet: dict[str, Any] | None = None,
        control: str = "mid",
        sff: bool = True,
        sff_input: str = "features",
        context: dict[str, Any] | None = None,
        scheduler: dict[str, Any] | None = None,
        t_start: int = 999,
        n_steps: int = 10,
        t_train_max: int | None = None,
        lr: float = 1e-5,
        weight_decay: float = 0.01,
        warmup_steps: int = 0,
        ema: bool = True,
        ema_decay: float = 0.999,
        scoring: dict[str, Any] | None = None,
        calibrate: bool = False,
        compile: bool = False,
        download: bool = False,
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(calibrate=calibrate, **kwargs)
        backbone = build_block(backbone)
        scoring = dict(plain(scoring) or {})
        # The scorer first: a typo in model.scoring.layers stops here, before anything is built.
        self.scorer = FeatureDistance(backbone, **scoring)
        unet_spec = dict(plain(unet) or {"preset": "sd15"})
        train_encoder = train_encoder_of(unet_spec.pop("train_encoder", "auto"), unet_spec.get("weights"))
        # Pretrained UNet first: with SD weights missing, the error names model.unet.weights.
        unet_model = build_unet(download=download, **unet_spec) if unet_spec.get("weights") else None
        self.latent: Latent = build_latent(
            latent or DEFAULT_LATENT, LatentContext(backbone, resize=scoring.get("resize"), download=download)
        )
        self.latent.check_scoring(self.scorer.layers)
        if unet_model is None:  # a fresh UNet takes the latent's width
            unet_spec.setdefault("in_channels", self.latent.channels)
            unet_spec.setdefault("out_channels", self.latent.channels)
            unet_model = build_unet(download=download, **unet_spec)
        factor = self.latent.downsampling
        check_image_size(input_size, factor * 2 ** unet_downsampling(unet_model))
        branch = SemanticGuidedBranch(unet_model, control=control, sff=sff, downsampling=factor, sff_input=sff_input)
        context_spec = dict(plain(context) or {})
        context_spec.setdefault("text_encoder", unet_spec.get("weights"))
        conditioning = Conditioning(dim=unet_model.config.cross_attention_dim, download=download, **context_spec)
        self.denoiser = ControlledDenoiser(unet_model, branch, conditioning, train_encoder)
        self.scheduler = make_scheduler(**dict(scheduler or {}))
        self.sampler = make_scheduler(**dict(scheduler or {}))
        check_t_start(self.sampler, t_start, n_steps)
        self.t_start, self.n_steps = t_start, n_steps
        total = self.scheduler.config.num_train_timesteps
        if t_train_max is not None and not t_start < t_train_max <= total:
            raise DiffusionConfigError(
                f"model.t_train_max={t_train_max} must lie in (model.t_start={t_start}, {total}] or be null."
            )
        self.t_train_max = t_train_max
        self.ema = ModuleEMA(self.denoiser.trainable_modules(), ema_decay) if ema else None
        self.lr, self.weight_decay, self.warmup_steps = lr, weight_decay, warmup_steps
        self.compile_models, self.seed = compile, seed
        self._ema_swapped = False
        self._last_ema_step = -1
        self._warned_repair = False

    # -- latents ----------------------------------------------------------------------------------
    def encode(self, image: Tensor, sample: bool = False, cached: bool = False) -> Tensor:
        """Latents of ImageNet-normalised images (``sample``: a posterior sample where the latent has one;
        ``cached``: may use the feature latent's cache of normal training images)."""
        return self.latent.encode(image, sample=sample, cached=cached)

    def decode(self, latent: Tensor) -> Tensor:
        """Images (ImageNet-normalised) of latents."""
        return self.latent.decode(latent)

    def _labels(self, categories: Sequence[str] | None, device: torch.device) -> Tensor | None:
        if self.denoiser.context.kind != "class":
            return None
        if categories is None:
            raise DiffusionConfigError(
                "model.context.kind=class needs each image's category; run the model through the trainer "
                "(test/predict) or use model.context.kind=empty."
            )
        unknown = sorted(set(categories) - set(self.categories))
        if unknown:
            raise DiffusionConfigError(
                f"model.context.kind=class: categories {unknown} were not trained (known: {self.categories})."
            )
        return torch.tensor([self.categories.index(c) for c in categories], device=device)

    def _noise(self, image: Tensor, shape: torch.Size) -> Tensor:
        """Inference noise seeded by each image's content: a score never depends on its batch."""
        noises = []
        for one in image.detach().float().cpu():
            generator = torch.Generator().manual_seed(zlib.crc32(one.numpy().tobytes()) ^ self.seed)
            noises.append(torch.randn(tuple(shape[1:]), generator=generator))
        return torch.stack(noises).to(image.device)

    # -- inference --------------------------------------------------------------------------------
    @torch.no_grad()
    def denoise(self, image: Tensor, z0: Tensor, categories: Sequence[str] | None = None) -> Tensor:
        """ẑ0: noise the latent ``z0`` of ``image`` to ``t_start``, DDIM with the image as hint."""
        labels = self._labels(categories, image.device)
        noise = self._noise(image, z0.shape).to(z0.dtype)
        return ddim_reconstruct(
            lambda x, t: self.denoiser(x, t, image, labels), self.sampler, z0, self.t_start, self.n_steps, noise
        )

    @torch.no_grad()
    def reconstruct(self, image: Tensor, categories: Sequence[str] | None = None) -> Tensor:
        """x̂0: encode, noise to ``t_start``, DDIM with the image as hint, decode."""
        return self.decode(self.denoise(image, self.encode(image), categories))

    @torch.no_grad()
    def forward(self, image: Tensor) -> tuple[Tensor, Tensor]:
        """``(anomaly_map B×1×H×W, score B)`` of images alone (export; class conditioning needs a batch)."""
        return self.finish_map(self.distances(image)[0])

    def finish_map(self, raw_map: Tensor) -> tuple[Tensor, Tensor]:
        return self.scorer.finish(raw_map)

    @torch.no_grad()
    def score_batch(self, batch: Mapping[str, Any]) -> AnomalyOutput:
        image = batch["image"]
        raw, reconstruction = self.distances(image, list(batch["category"]))
        return AnomalyOutput(*self.finish_map(raw), reconstruction=reconstruction, raw_map=raw)

    @torch.no_grad()
    def distances(self, image: Tensor, categories: Sequence[str] | None = None) -> tuple[Tensor, Tensor]:
        """Feature distances B×1×H×W of the image and its reconstruction (before blur and pooling), and
        the reconstruction."""
        z0 = self.encode(image)
        denoised = self.denoise(image, z0, categories)
        reconstruction = self.decode(denoised).to(image.dtype)
        return self.latent.distances(self.scorer, image, z0, denoised, reconstruction), reconstruction

    # -- training ---------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        super().setup(stage)
        if self.denoiser.context.kind == "class" and len(self.categories) > self.denoiser.context.table.num_embeddings:
            raise DiffusionConfigError(
                f"model.context.num_classes={self.denoiser.context.table.num_embeddings} is below the "
                f"{len(self.categories)} categories; raise it."
            )
        if self.compile_models:
            self.denoiser.unet.compile()
            self.denoiser.branch.controlnet.compile()
        interval = self.trainer.val_check_interval if self._trainer is not None else None
        if stage == "fit" and self.trainer.check_val_every_n_epoch is None and isinstance(interval, int):
            if getattr(self.trainer.datamodule, "val", "none") != "none":
                self._check_not_fitting(interval)

    def _check_not_fitting(self, step: int) -> None:
        """A validation at ``step`` must come after the latent's fitting phase (there is no denoiser yet)."""
        if self.latent.fitting(step):
            raise DiffusionConfigError(
                f"Validation at step {step} falls in the latent's fitting phase (model.latent.fit_steps="
                f"{self.latent.fit_steps}): there is no denoiser to validate yet; set trainer.val_check_interval to "
                f"at least {self.latent.fit_steps} (with trainer.check_val_every_n_epoch=null), or data.val=none."
            )

    def _broadcast(self, value: Tensor) -> Tensor:
        """Rank 0's ``value`` on every rank (itself outside DDP)."""
        if self._trainer is not None and self.trainer.world_size > 1:
            return self.trainer.strategy.broadcast(value, src=0)
        return value

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        image = batch["image"]
        # With a synthesis strategy the batch also holds each image's normal ``source``: the
        # latent is fitted on normal images and the denoiser learns to repair the synthetic anomalies.
        source = batch.get("source")
        normal = image if source is None else source
        size = image.shape[0]
        if self.latent.fitting(self.global_step):
            loss, parts = self.latent.fit_loss(normal)
            prefix = f"train/{self.latent.fit_name}"
            self.log_dict({f"{prefix}_{k}": v for k, v in parts.items()}, batch_size=size)
            self.log(f"{prefix}_loss", loss, prog_bar=True, batch_size=size)
            return loss
        self.latent.prepare(normal, self._broadcast)
        with torch.no_grad():
            z0 = self.encode(normal, sample=True, cached=True)
            z_in = z0 if source is None else self._synthetic_latents(image, z0, batch["label"])
        noise = torch.randn_like(z0)
        t = sample_timesteps(self.scheduler, z0.shape[0], z0.device, self.t_train_max)
        labels = self._labels(batch.get("category"), image.device)
        x_t = q_sample(self.scheduler, z_in, t, noise)
        prediction = self.denoiser(x_t, t, image, labels)
        target = denoising_target(self.scheduler, z0, noise, t, x_t)
        loss = F.mse_loss(prediction.float(), target.float())
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        for name, extra in self.latent.auxiliary_losses(z0, normal).items():
            self.log(f"train/{name}", extra, batch_size=size)
            loss = loss + extra
        return loss

    def _synthetic_latents(self, image: Tensor, z0: Tensor, label: Tensor) -> Tensor:
        """Latents of the batch's synthetic anomalies; the normal rows keep their source latent."""
        anomalous = label.bool()
        if not bool(anomalous.any()):
            return z0
        if self.scheduler.config.prediction_type != "sample" and not self._warned_repair:
            rank_zero_warn(
                f"DiAD repairs synthetic anomalies with model.scheduler.prediction_type="
                f"{self.scheduler.config.prediction_type}: its implied target grows like 1/sqrt(1-alpha_t) at small t; "
                "model.scheduler.prediction_type=sample keeps it bounded."
            )
            self._warned_repair = True
        z_in = z0.clone()
        z_in[anomalous] = self.encode(image[anomalous], sample=True)
        return z_in

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        """Step, then fold the new weights into the EMA — before any callback (the checkpoint) runs."""
        super().optimizer_step(*args, **kwargs)
        step = self.global_step  # not yet counted: the index of the step just taken
        if self.ema is not None and not self.latent.fitting(step) and step != self._last_ema_step:
            self.ema.update()
            self._last_ema_step = step

    def restore_overrides(self) -> dict[str, Any]:
        """Rebuild the UNet and the latent from their stored architectures, the backbone and a constant
        context untouched (their values come from the checkpoint)."""
        overrides: dict[str, Any] = {
            "backbone": {"weights": "none"},
            "unet": {"architecture": architecture_of(self.denoiser.unet)},
            "latent": self.latent.restore_overrides(),
        }
        if self.denoiser.context.kind in CONSTANT_CONTEXTS:
            overrides["context"] = {"read": False, "tokens": self.denoiser.context.length}
        return overrides

    def configure_gradient_clipping(
        self, optimizer: torch.optim.Optimizer, gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """Clip each parameter group on its own: the viewing decoder's (or the autoencoder's) gradients
        must not change how much the denoiser's are scaled."""
        if not gradient_clip_val:
            return
        for group in optimizer.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if gradient_clip_algorithm == "value":
                torch.nn.utils.clip_grad_value_(params, gradient_clip_val)
            elif params:
                torch.nn.utils.clip_grad_norm_(params, gradient_clip_val)

    def configure_optimizers(self) -> Any:
        """AdamW over the denoiser's trained modules and the latent's own groups, each group with its
        schedule: the denoiser's warm-up after the latent's fitting steps, or a cosine to 0 over them."""
        fit_steps = self.latent.fit_steps
        params = [p for m in self.denoiser.trainable_modules().values() for p in m.parameters()]
        warmup = partial(linear_warmup, start=fit_steps, warmup=self.warmup_steps)
        schedules = {"diffusion": warmup, "fit": partial(cosine_to_zero, steps=fit_steps)}
        groups, factors = [{"params": params, "lr": self.lr}], [warmup]
        for group, schedule in self.latent.optimizer_groups():
            groups.append(group)
            factors.append(schedules[schedule])
        optimizer = torch.optim.AdamW(groups, lr=self.lr, weight_decay=self.weight_decay)
        if self.warmup_steps <= 0 and fit_steps <= 0:
            return optimizer
        return per_step(optimizer, factors)

    # -- EMA weights for evaluation ----------------------------------------------------------------
    def _use_ema(self, on: bool) -> None:
        if self.ema is not None and self.ema.updates > 0 and self._ema_swapped != on:
            self.ema.swap()
            self._ema_swapped = on

    def on_validation_epoch_start(self) -> None:
        self._check_not_fitting(self.global_step)
        self._use_ema(True)
        super().on_validation_epoch_start()

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        self._use_ema(False)

    def on_test_epoch_start(self) -> None:
        self._use_ema(True)
        super().on_test_epoch_start()

    def on_test_epoch_end(self) -> None:
        super().on_test_epoch_end()
        self._use_ema(False)

    def on_predict_epoch_start(self) -> None:
        self._use_ema(True)
        super().on_predict_epoch_start()

    def on_predict_epoch_end(self) -> None:
        self._use_ema(False)
