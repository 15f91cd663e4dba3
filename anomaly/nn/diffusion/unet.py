"""DiAD's UNet denoiser (diffusers ``UNet2DConditionModel``): build, load, and which parts it trains."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from diffusers import UNet2DConditionModel
from torch import nn

from anomaly.nn.diffusion.build import build, levels_factor, resolve
from anomaly.nn.diffusion.presets import UNET_PRESETS, DiffusionConfigError
from anomaly.nn.diffusion.weights import from_pretrained, load_checked, read_state_dict

OPTION = "model.unet.weights"
TRAIN_ENCODER = (True, False, "auto")


def build_unet(
    preset: str = "sd15",
    weights: str | None = None,
    download: bool = False,
    architecture: dict[str, Any] | None = None,
    **overrides: Any,
) -> UNet2DConditionModel:
    """A UNet of a preset's layout, randomly initialised or loaded from ``weights``.

    Args:
        preset: a key of ``UNET_PRESETS`` (``sd15``, ``cpu``).
        weights: ``None`` (random), a Stable Diffusion folder in diffusers layout (its ``unet/``
            is used), a UNet folder, an original SD/LDM checkpoint file, or a hub id (cache only
            unless ``download``).
        download: allow fetching a hub id from the Hugging Face hub.
        architecture: a complete diffusers config (what ``architecture_of`` returns, as stored in
            checkpoints for re-testing): build exactly it, randomly initialised, reading no file;
            ``preset``, ``weights`` and ``overrides`` are then ignored.
        **overrides: ``UNet2DConditionModel`` arguments replacing the preset's.
    """
    if architecture is not None:
        return build(UNet2DConditionModel, architecture=architecture)
    config = resolve(UNET_PRESETS, preset, "model.unet.preset", **overrides)
    if weights is None:
        return build(UNet2DConditionModel, config)
    unet = from_pretrained(UNet2DConditionModel, str(weights), "unet", OPTION, download)
    if unet is not None:
        return unet
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    unet = build(UNet2DConditionModel, config)
    state = read_state_dict(Path(weights).expanduser())
    if not any(k.startswith("model.diffusion_model.") for k in state):
        load_checked(unet, state, OPTION, str(weights))  # already in diffusers naming
        return unet
    load_checked(unet, convert_ldm_unet_checkpoint(state, dict(unet.config)), OPTION, str(weights))
    return unet


def train_encoder_of(option: bool | str, weights: str | None) -> bool:
    """``model.unet.train_encoder``: ``auto`` trains the encoder of a UNet without pretrained weights
    (a frozen random encoder, time embedding and middle block would never learn) and freezes a
    pretrained one (the paper); ``true``/``false`` as given."""
    if option not in TRAIN_ENCODER:
        raise DiffusionConfigError(f"model.unet.train_encoder={option!r} is not valid; choose true, false or auto.")
    return weights is None if option == "auto" else bool(option)


def decoder_modules(unet: UNet2DConditionModel) -> list[nn.Module]:
    """The parts DiAD trains: the up blocks and the output head (norm + conv)."""
    return [unet.up_blocks, unet.conv_norm_out, unet.conv_out]


def freeze_encoder(unet: UNet2DConditionModel) -> None:
    """Freeze everything but the decoder: time embedding, input conv, down blocks, middle block."""
    unet.requires_grad_(False)
    for module in decoder_modules(unet):
        module.requires_grad_(True)


def downsampling(unet: UNet2DConditionModel) -> int:
    """How many times the UNet halves its input (a latent side must be divisible by 2**this)."""
    return len(unet.config.block_out_channels) - 1


def side_factor(unet: UNet2DConditionModel) -> int:
    """The factor a latent side must be a multiple of."""
    return levels_factor(unet.config.block_out_channels)
