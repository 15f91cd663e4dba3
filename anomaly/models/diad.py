"""DiAD (He et al., AAAI 2024): latent diffusion reconstruction steered by a semantic-guided branch."""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from anomaly.models.base import AnomalyModule, build_block
from anomaly.models.lr_schedules import cosine_to_zero, linear_warmup, per_step
from anomaly.models.outputs import AnomalyOutput
from anomaly.nn.diffusion import (
    Conditioning,
    ControlledDenoiser,
    ModuleEMA,
    SemanticGuidedBranch,
    WeightsError,
    architecture_of,
    autoencoder_loss,
    build_autoencoder,
    build_unet,
    ddim_reconstruct,
    make_scheduler,
    q_sample,
)
from anomaly.nn.diffusion.autoencoder import downsampling as ae_downsampling
from anomaly.nn.diffusion.feature_latent import FeatureDecoder, FeatureLatent
from anomaly.nn.diffusion.presets import DiffusionConfigError
from anomaly.nn.diffusion.sampling import check_t_start, denoising_target, sample_timesteps
from anomaly.nn.diffusion.unet import downsampling as unet_downsampling
from anomaly.nn.feature_distance import FeatureDistance


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


REFERENCES = ("input", "autoencoder")
LATENTS = ("autoencoder", "features")


class DiAD(AnomalyModule):
    """Reconstruct the image through a controlled latent diffusion model; score feature differences.

    Training: ε-MSE on latents of normal images; only the SG branch (ControlNet copy, hint encoder,
    zero convs, SFF), the UNet decoder + output head and a learned context are trained. With a
    synthesis strategy (``synthesis=perlin`` …) the noisy latent and the hint come from the synthetic
    anomaly and the target from its normal source, so the denoiser learns to repair. With
    ``autoencoder.fit_steps > 0`` the first steps fit the autoencoder instead (L1 + KL), for presets
    without a pretrained one. Inference: encode, noise to ``t_start``, ``n_steps`` DDIM steps with
    the image as hint at every step (no classifier-free guidance), decode, and compare pretrained
    features of input and reconstruction (``FeatureDistance``). With ``latent=features`` the latent is
    the scoring backbone's own standardised features (``FeatureLatent``) instead of an autoencoder's,
    the map compares the features of the latent and of its denoised version, and a small decoder
    trained beside the denoiser turns latents into images for viewing only.

    Args:
        backbone: frozen feature extractor for scoring (``model.backbone``).
        input_size: side or (height, width) the model sees, checked against the downsampling.
        unet: ``build_unet`` arguments: ``preset`` (``sd15``|``cpu``), ``weights``, overrides, and
            ``train_encoder`` (train the whole UNet; for one trained from scratch).
        autoencoder: ``build_autoencoder`` arguments plus ``fit_steps``, ``lr``, ``kl_weight``.
        latent: ``autoencoder`` (the paper) or ``features`` (see above; ``autoencoder`` is unused).
        features: ``latent=features`` options: ``layers`` (of the backbone; all when ``None``),
            ``downsampling`` (image / latent side), ``cache`` (training images whose features are
            kept), ``decoder_width``, ``decoder_lr``.
        control: ``mid`` (official) or ``all``; sff: use the SFF block.
        context: ``Conditioning`` arguments (``kind``: empty|file|learned|class, ``tokens``, ...).
        scheduler: ``DDIMScheduler`` overrides of SD-1.5's schedule.
        t_start, n_steps: inference noising step and DDIM steps.
        reference: what the reconstruction is compared with: ``input`` (the paper: the image) or
            ``autoencoder`` (the autoencoder's own reconstruction of the image, so a small
            autoencoder's blur cancels and the map shows what the denoiser changed).
        t_train_max: train on timesteps below this only (``None``: the whole schedule, the paper);
            with a low ``t_start`` the denoiser then spends no steps on noise levels it never meets.
        lr, weight_decay, warmup_steps: AdamW and a linear warm-up of the diffusion phase (the
            autoencoder phase's LR decays to 0 by a cosine over ``fit_steps``).
        ema, ema_decay: keep an EMA of the trained weights and evaluate with it.
        latent_scale: latent multiplier; ``None``: the autoencoder's ``scaling_factor``; ``auto``:
            1/std of the first training batch's latents (LDM's ``scale_by_std``).
        scoring: ``FeatureDistance`` options (``layers``, ``sigma``, ``pool_size``, ``pool_iters``,
            ``resize``, ``distance``).
        calibrate: before testing, run the category's normal training images through the model and
            score each test map per pixel as a z-score against their maps (not in the paper: it
            removes what the denoiser gets wrong on every normal image, e.g. at the image border).
        compile: ``torch.compile`` the UNet and the ControlNet.
        download: allow fetching hub ids of ``unet.weights``/``autoencoder.weights``.
        seed: seed of the inference noise (per image, from its content: batch-independent).
        **kwargs: ``AnomalyModule`` options (metrics).
    """

    def __init__(
        self,
        backbone: torch.nn.Module,
        input_size: int | Sequence[int] = 256,
        unet: dict[str, Any] | None = None,
        autoencoder: dict[str, Any] | None = None,
        latent: str = "autoencoder",
        features: dict[str, Any] | None = None,
        control: str = "mid",
        sff: bool = True,
        context: dict[str, Any] | None = None,
        scheduler: dict[str, Any] | None = None,
        t_start: int = 999,
        n_steps: int = 10,
        reference: str = "input",
        t_train_max: int | None = None,
        lr: float = 1e-5,
        weight_decay: float = 0.01,
        warmup_steps: int = 0,
        ema: bool = True,
        ema_decay: float = 0.999,
        latent_scale: float | str | None = None,
        scoring: dict[str, Any] | None = None,
        calibrate: bool = False,
        compile: bool = False,
        download: bool = False,
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(calibrate=calibrate, **kwargs)
        backbone = build_block(backbone)
        if latent not in LATENTS:
            raise DiffusionConfigError(f"model.latent={latent} is not valid; choose one of {list(LATENTS)}.")
        if reference not in REFERENCES:
            raise DiffusionConfigError(f"model.reference={reference} is not valid; choose one of {list(REFERENCES)}.")
        if latent == "features" and reference != "input":
            raise DiffusionConfigError("model.reference=autoencoder needs model.latent=autoencoder.")
        ae_spec = dict(autoencoder or {"preset": "kl-f8"})
        self.ae_fit_steps = int(ae_spec.pop("fit_steps", 0)) if latent == "autoencoder" else 0
        self.ae_lr = float(ae_spec.pop("lr", 1e-4))
        self.kl_weight = float(ae_spec.pop("kl_weight", 1e-6))
        if (
            latent == "autoencoder"
            and ae_spec.get("weights") is None
            and ae_spec.get("architecture") is None
            and self.ae_fit_steps <= 0
        ):
            raise WeightsError(
                "DiAD needs a trained autoencoder: set model.autoencoder.weights to a model=diad_autoencoder "
                "last.ckpt (or a diffusers/LDM VAE), or model.autoencoder.fit_steps>0 to fit one first."
            )
        unet_spec = dict(unet or {"preset": "sd15"})
        train_encoder = bool(unet_spec.pop("train_encoder", False))
        # Pretrained UNet first: with SD weights missing, the error names model.unet.weights.
        unet_model = build_unet(download=download, **unet_spec) if unet_spec.get("weights") else None
        self.autoencoder, self.feature_latent, self.feature_decoder = None, None, None
        feature_spec = dict(features or {})
        self.decoder_lr = float(feature_spec.pop("decoder_lr", 1e-3))
        if latent == "autoencoder":
            self.autoencoder = build_autoencoder(download=download, **ae_spec)
            self.autoencoder.requires_grad_(self.ae_fit_steps > 0)
            width, factor = self.autoencoder.config.latent_channels, ae_downsampling(self.autoencoder)
        else:
            decoder_width = int(feature_spec.pop("decoder_width", 128))
            self.feature_latent = FeatureLatent(backbone, resize=(scoring or {}).get("resize"), **feature_spec)
            width, factor = self.feature_latent.channels, self.feature_latent.downsampling
            self.feature_decoder = FeatureDecoder(width, factor, decoder_width)
        self._ae_frozen = self.ae_fit_steps <= 0
        if unet_model is None:  # a fresh UNet takes the latent's width
            unet_spec.setdefault("in_channels", width)
            unet_spec.setdefault("out_channels", width)
            unet_model = build_unet(download=download, **unet_spec)
        check_image_size(input_size, factor * 2 ** unet_downsampling(unet_model))
        branch = SemanticGuidedBranch(unet_model, control=control, sff=sff, downsampling=factor)
        conditioning = Conditioning(dim=unet_model.config.cross_attention_dim, **dict(context or {}))
        self.denoiser = ControlledDenoiser(unet_model, branch, conditioning, train_encoder)
        self.scheduler = make_scheduler(**dict(scheduler or {}))
        self.sampler = make_scheduler(**dict(scheduler or {}))
        check_t_start(self.sampler, t_start, n_steps)
        self.t_start, self.n_steps = t_start, n_steps
        self.reference = reference
        total = self.scheduler.config.num_train_timesteps
        if t_train_max is not None and not t_start < t_train_max <= total:
            raise DiffusionConfigError(
                f"model.t_train_max={t_train_max} must lie in (model.t_start={t_start}, {total}] or be null."
            )
        self.t_train_max = t_train_max
        self.scorer = FeatureDistance(backbone, **dict(scoring or {}))
        if self.feature_latent is not None and self.scorer.layers is not None:
            outside = [layer for layer in self.scorer.layers if layer not in self.feature_latent.layers]
            if outside:
                raise DiffusionConfigError(
                    f"model.scoring.layers has {outside}, which model.features.layers leaves out of the latent; "
                    "add them there or drop them from the scoring."
                )
        self.ema = ModuleEMA(self.denoiser.trainable_modules(), ema_decay) if ema else None
        if latent == "features":
            scale = 1.0  # the feature latent is standardised already
        elif latent_scale == "auto":
            scale = math.nan
        else:
            scale = float(latent_scale if latent_scale is not None else self.autoencoder.config.scaling_factor)
        self.register_buffer("latent_scale", torch.tensor(scale))
        self.lr, self.weight_decay, self.warmup_steps = lr, weight_decay, warmup_steps
        self.compile_models, self.seed = compile, seed
        self._ema_swapped = False
        self._last_ema_step = -1
        self._warned_repair = False

    # -- latents ----------------------------------------------------------------------------------
    def encode(self, image: Tensor, sample: bool = False, cached: bool = False) -> Tensor:
        """Scaled latents of ImageNet-normalised images (posterior sample or mode).

        ``cached``: the feature latent may use its cache (normal training images only).
        """
        if self.feature_latent is not None:
            return self.feature_latent.encode(image, cached=cached)
        if torch.isnan(self.latent_scale):
            raise DiffusionConfigError(
                "model.latent_scale=auto is not estimated yet (the model was never trained); train it or set "
                "model.latent_scale to a number."
            )
        posterior = self.autoencoder.encode(image).latent_dist
        return (posterior.sample() if sample else posterior.mode()) * self.latent_scale

    def decode(self, latent: Tensor) -> Tensor:
        """Images (ImageNet-normalised) of scaled latents."""
        if self.feature_decoder is not None:
            return self.feature_decoder(latent)
        return self.autoencoder.decode(latent / self.latent_scale).sample

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
        if self.feature_latent is not None:
            standardised = self.scorer.distance == "l2"  # every channel weighs the same
            a, b = (self.feature_latent.split(z, standardised) for z in (z0, denoised))
            return self.scorer.feature_distances(a, b, image.shape[-2:]), reconstruction
        reference = image if self.reference == "input" else self.decode(z0).to(image.dtype)
        return self.scorer.distances(reference, reconstruction), reconstruction

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

    def _start_diffusion_phase(self, image: Tensor) -> None:
        """Freeze the autoencoder; estimate the latent scale (or feature statistics) once."""
        if self.feature_latent is not None:
            if not self.feature_latent.fitted:
                self.feature_latent.fit(image)
                if self._trainer is not None and self.trainer.world_size > 1:
                    for buffer in (self.feature_latent.mean, self.feature_latent.std):
                        buffer.copy_(self.trainer.strategy.broadcast(buffer, src=0))
            return
        if not self._ae_frozen:
            self.autoencoder.requires_grad_(False)
            self._ae_frozen = True
        if torch.isnan(self.latent_scale):
            with torch.no_grad():
                std = self.autoencoder.encode(image).latent_dist.sample().float().std()
            scale = (1.0 / std).reshape(())
            if self._trainer is not None and self.trainer.world_size > 1:
                scale = self.trainer.strategy.broadcast(scale, src=0)
            self.latent_scale.fill_(float(scale))

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        image = batch["image"]
        # With a synthesis strategy the batch also holds each image's normal ``source``: the
        # autoencoder learns normal images and the denoiser learns to repair the synthetic anomalies.
        source = batch.get("source")
        normal = image if source is None else source
        if self.global_step < self.ae_fit_steps and not self._ae_frozen:
            loss, parts, _ = autoencoder_loss(self.autoencoder, normal, self.kl_weight)
            self.log_dict({f"train/ae_{k}": v for k, v in parts.items()}, batch_size=image.shape[0])
            name = "train/ae_loss"
        else:
            self._start_diffusion_phase(normal)
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
            name = "train/loss"
            if self.feature_decoder is not None:  # for viewing only: the latent gets no gradient
                decoded = F.l1_loss(self.feature_decoder(z0).float(), normal.float())
                self.log("train/decoder_l1", decoded, batch_size=image.shape[0])
                loss = loss + decoded
        self.log(name, loss, prog_bar=True, batch_size=image.shape[0])
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
        if self.ema is not None and step >= self.ae_fit_steps and step != self._last_ema_step:
            self.ema.update()
            self._last_ema_step = step

    def restore_overrides(self) -> dict[str, Any]:
        """Rebuild the UNet and autoencoder from their stored architectures, the backbone untouched."""
        overrides: dict[str, Any] = {
            "backbone": {"weights": "none"},
            "unet": {"architecture": architecture_of(self.denoiser.unet)},
        }
        if self.autoencoder is not None:
            overrides["autoencoder"] = {"architecture": architecture_of(self.autoencoder)}
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
        params = [p for m in self.denoiser.trainable_modules().values() for p in m.parameters()]
        groups = [{"params": params, "lr": self.lr}]
        if self.ae_fit_steps > 0:
            groups.append({"params": list(self.autoencoder.parameters()), "lr": self.ae_lr, "weight_decay": 0.0})
        warmup = partial(linear_warmup, start=self.ae_fit_steps, warmup=self.warmup_steps)
        factors = [warmup]
        if self.ae_fit_steps > 0:
            factors.append(partial(cosine_to_zero, steps=self.ae_fit_steps))
        if self.feature_decoder is not None:
            groups.append({"params": list(self.feature_decoder.parameters()), "lr": self.decoder_lr, "weight_decay": 0.0})
            factors.append(warmup)
        optimizer = torch.optim.AdamW(groups, lr=self.lr, weight_decay=self.weight_decay)
        if self.warmup_steps <= 0 and self.ae_fit_steps <= 0:
            return optimizer
        return per_step(optimizer, factors)

    # -- EMA weights for evaluation ----------------------------------------------------------------
    def _use_ema(self, on: bool) -> None:
        if self.ema is not None and self.ema.updates > 0 and self._ema_swapped != on:
            self.ema.swap()
            self._ema_swapped = on

    def on_validation_epoch_start(self) -> None:
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
