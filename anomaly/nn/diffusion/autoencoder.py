"""The pixel-space autoencoder (diffusers ``AutoencoderKL``): build, load, and its training loss."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL
from torch import Tensor

from anomaly.nn.diffusion.build import build, resolve
from anomaly.nn.diffusion.presets import AUTOENCODER_PRESETS
from anomaly.nn.diffusion.weights import WeightsError, from_pretrained, load_checked, read_state_dict

_LDM_PREFIXES = ("first_stage_model.", "encoder.down.", "vae.encoder.")
# Keys of a stored autoencoder spec that are not AutoencoderKL arguments.
_NOT_ARCHITECTURE = ("_target_", "weights", "download", "fit_steps", "lr", "kl_weight", "scale", "reference",
                     "architecture", "option")


def build_autoencoder(
    preset: str = "kl-f8",
    weights: str | None = None,
    download: bool = False,
    architecture: dict[str, Any] | None = None,
    option: str = "model.latent",
    **overrides: Any,
) -> AutoencoderKL:
    """A KL autoencoder of a preset's layout, random or loaded from ``weights``.

    Args:
        preset: a key of ``AUTOENCODER_PRESETS`` (``kl-f8``, ``cpu``).
        weights: ``None`` (random); a ``last.ckpt`` of ``model=diad_autoencoder`` or ``model=diad``
            (its own architecture is used); a diffusers folder (an SD folder's ``vae/`` or a VAE
            folder); an original LDM/SD checkpoint file (KL-f8, converted); or a hub id (cache only
            unless ``download``).
        download: allow fetching a hub id from the Hugging Face hub.
        architecture: a complete diffusers config (what ``architecture_of`` returns, as stored in
            checkpoints for re-testing): build exactly it, randomly initialised, reading no file;
            ``preset``, ``weights`` and ``overrides`` are then ignored.
        option: the config node of these arguments, named in errors (``model.latent`` of DiAD,
            ``model.autoencoder`` of its autoencoder stage).
        **overrides: ``AutoencoderKL`` arguments replacing the preset's.

    Raises:
        WeightsError: ``weights`` points at nothing usable.
    """
    if architecture is not None:
        return build(AutoencoderKL, architecture=architecture)
    config = resolve(AUTOENCODER_PRESETS, preset, f"{option}.preset", **overrides)
    weights_option = f"{option}.weights"
    if weights is None:
        return build(AutoencoderKL, config)
    path = Path(str(weights)).expanduser()
    if not path.exists() and (path.suffix in (".ckpt", ".pt", ".pth", ".safetensors") or path.is_absolute()):
        raise WeightsError(
            f"{weights_option}={weights} does not exist; train one with `python -m anomaly.train "
            "model=diad_autoencoder data=...` and pass its checkpoints/last.ckpt."
        )
    model = from_pretrained(AutoencoderKL, str(weights), "vae", weights_option, download)
    if model is not None:
        return model
    if path.suffix == ".ckpt":
        own = _from_lightning(path, weights_option)
        if own is not None:
            return own
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    model = build(AutoencoderKL, config)
    state = read_state_dict(path)
    if any(k.startswith(_LDM_PREFIXES) for k in state):
        state = convert_ldm_vae_checkpoint(state, dict(model.config))
    load_checked(model, state, weights_option, str(weights))
    return model


def _from_lightning(path: Path, option: str) -> AutoencoderKL | None:
    """The autoencoder inside a checkpoint of this project, else ``None``: ``autoencoder.*`` of
    ``model=diad_autoencoder``, ``latent.autoencoder.*`` of ``model=diad`` with an autoencoder latent.
    Its architecture is the one stored in the checkpoint (or, for older ones, its preset and overrides)."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        return None  # not one of ours (they hold plain data only): read_state_dict says what it is
    state = checkpoint.get("state_dict", {}) if isinstance(checkpoint, dict) else {}
    hparams = checkpoint.get("hyper_parameters") or {} if isinstance(checkpoint, dict) else {}
    run_model = (checkpoint.get("anomaly_config") or {}).get("model") or {} if isinstance(checkpoint, dict) else {}
    for prefix, node in (("autoencoder.", "autoencoder"), ("latent.autoencoder.", "latent")):
        if not any(k.startswith(prefix) for k in state):
            continue
        spec = dict(hparams.get(node) or run_model.get(node) or {})
        if spec.get("architecture") is not None:
            model = build(AutoencoderKL, architecture=spec["architecture"])
        else:
            overrides = {k: v for k, v in spec.items() if k not in _NOT_ARCHITECTURE}
            model = build(AutoencoderKL, resolve(AUTOENCODER_PRESETS, overrides.pop("preset", "kl-f8"), option, **overrides))
        load_checked(model, {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}, option, str(path))
        return model
    return None


def downsampling(autoencoder: AutoencoderKL) -> int:
    """The spatial factor from image to latent (8 for KL-f8)."""
    return 2 ** (len(autoencoder.config.block_out_channels) - 1)


def autoencoder_loss(
    autoencoder: AutoencoderKL,
    image: Tensor,
    kl_weight: float = 1e-6,
    perceptual: Callable[[Tensor, Tensor], Tensor] | None = None,
    perceptual_weight: float = 1.0,
) -> tuple[Tensor, dict[str, Tensor], Tensor]:
    """LDM's first-stage loss without the discriminator: L1 + optional perceptual + weighted KL.

    The KL is summed per image and divided by the number of image values, so ``kl_weight`` has the
    meaning of LDM's (which sums both terms per image).

    Returns:
        ``(loss, parts, reconstruction)``, ``parts`` holding the detached terms for logging.
    """
    posterior = autoencoder.encode(image).latent_dist
    reconstruction = autoencoder.decode(posterior.sample()).sample
    rec = (image - reconstruction).abs().mean()
    kl = posterior.kl().mean() / image[0].numel()
    loss = rec + kl_weight * kl
    parts = {"l1": rec.detach(), "kl": kl.detach()}
    if perceptual is not None and perceptual_weight > 0:
        perc = perceptual(image, reconstruction)
        loss = loss + perceptual_weight * perc
        parts["perceptual"] = perc.detach()
    return loss, parts, reconstruction
