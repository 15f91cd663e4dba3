"""DiAD's semantic-guided (SG) branch: a diffusers ControlNet copy of the UNet encoder + SFF.

``ControlNetModel.from_unet`` gives the structure DiAD uses: a copy of the UNet's encoder and
middle block initialised from the UNet, a hint encoder for the input image added after the first
conv, and a zero-initialised 1×1 conv on every encoder output and on the middle output. The SFF
block then fuses the next-to-last level's outputs (the sources) into the last level's (the
targets). ``control`` chooses where the residuals go: ``mid`` (official code,
``only_mid_control=True``) adds only the middle residual and the last level's (SFF-fused) skip
residuals; ``all`` adds every skip residual.

``sff_input`` chooses what SFF reads of the sources. The official code (``zero_conv``) fuses their
zero-conv outputs; with ``control=mid`` those reach the UNet only through SFF, and the zero convs
and SFF's convs all start at zero, so each gets zero gradient from the other: SFF stays exactly
zero forever. ``features`` (the default) feeds SFF the source features before their zero convs,
so SFF learns from the first step; its output still starts at zero (its own convs are zero).
The sources' zero convs are kept outside the diffusers ControlNet (``source_convs``) so both
readings exist in one forward.
"""

from __future__ import annotations

import math

import torch
from diffusers import ControlNetModel, UNet2DConditionModel
from torch import Tensor, nn

from anomaly.nn.diffusion.presets import DiffusionConfigError
from anomaly.nn.diffusion.sff import SpatialFeatureFusion

CONTROL_MODES = ("mid", "all")
SFF_INPUTS = ("features", "zero_conv")
# The official hint encoder: 3→16→16→32(s2)→32→96(s2)→96→256(s2)→zero conv→C, SiLU between.
_HINT_CHANNELS = (16, 32, 96, 256)


def residual_layout(unet: UNet2DConditionModel) -> list[tuple[int, int]]:
    """``(channels, level)`` of every encoder output the UNet keeps as a skip, in order.

    Level 0 is the input resolution; a downsampler's output belongs to the next level.
    """
    channels = list(unet.config.block_out_channels)
    layers = unet.config.layers_per_block
    layout = [(channels[0], 0)]
    for level, width in enumerate(channels):
        layout += [(width, level)] * layers
        if level < len(channels) - 1:
            layout.append((width, level + 1))
    return layout


def hint_channels(downsampling: int) -> tuple[int, ...]:
    """Hint-encoder widths that bring an image to the latent size (one stride-2 conv per width step)."""
    steps = int(math.log2(downsampling))
    if 2**steps != downsampling or not 1 <= steps <= 3:
        raise DiffusionConfigError(f"The autoencoder downsamples by {downsampling}; the SG hint encoder supports 2, 4 or 8.")
    return _HINT_CHANNELS[: steps + 1] if steps < 3 else _HINT_CHANNELS


class SemanticGuidedBranch(nn.Module):
    """ControlNet + optional SFF, returning the residuals the UNet adds.

    Args:
        unet: the denoiser to copy (its weights initialise the branch when ``copy_weights``).
        control: ``mid`` or ``all`` (see module doc).
        sff: use the spatial-aware feature fusion block.
        sff_input: ``features`` or ``zero_conv`` (official; see module doc).
        downsampling: image-to-latent factor of the autoencoder (the hint encoder matches it).
        copy_weights: initialise from the UNet's weights (off for meta-device size checks).
    """

    def __init__(
        self,
        unet: UNet2DConditionModel,
        control: str = "mid",
        sff: bool = True,
        downsampling: int = 8,
        copy_weights: bool = True,
        sff_input: str = "features",
    ) -> None:
        super().__init__()
        if control not in CONTROL_MODES:
            raise DiffusionConfigError(f"model.control={control} is not valid; choose mid or all.")
        if sff_input not in SFF_INPUTS:
            raise DiffusionConfigError(f"model.sff_input={sff_input} is not valid; choose features or zero_conv.")
        self.control, self.sff_input = control, sff_input
        self.controlnet = ControlNetModel.from_unet(
            unet, conditioning_embedding_out_channels=hint_channels(downsampling), load_weights_from_unet=copy_weights
        )
        layout = residual_layout(unet)
        last = layout[-1][1]
        self.targets = [i for i, (_, level) in enumerate(layout) if level == last]
        self.sources = [i for i, (_, level) in enumerate(layout) if level == last - 1]
        self.sff = (
            SpatialFeatureFusion([layout[i][0] for i in self.sources], [layout[i][0] for i in self.targets])
            if sff and last >= 1
            else None
        )
        # The sources' zero convs, moved out of the ControlNet (which then returns their raw features).
        self.source_convs = nn.ModuleList()
        if self.sff is not None:
            blocks = self.controlnet.controlnet_down_blocks
            for i in self.sources:
                self.source_convs.append(blocks[i])
                blocks[i] = nn.Identity()

    def forward(
        self, sample: Tensor, timestep: Tensor, context: Tensor, hint: Tensor
    ) -> tuple[tuple[Tensor, ...], Tensor]:
        """Skip residuals (one per UNet skip) and the middle residual for a noisy latent and its hint."""
        down, mid = self.controlnet(
            sample, timestep, encoder_hidden_states=context, controlnet_cond=hint, return_dict=False
        )
        down = list(down)
        if self.sff is not None:
            features = [down[i] for i in self.sources]
            residuals = (
                [conv(f) for conv, f in zip(self.source_convs, features, strict=True)]
                if self.control == "all" or self.sff_input == "zero_conv"
                else [torch.zeros_like(f) for f in features]  # mid control adds no source residual
            )
            for i, value in zip(self.sources, residuals, strict=True):
                down[i] = value
            fused = self.sff(features if self.sff_input == "features" else residuals, [down[i] for i in self.targets])
            for i, value in zip(self.targets, fused, strict=True):
                down[i] = value
        if self.control == "mid":
            keep = set(self.targets)
            down = [value if i in keep else torch.zeros_like(value) for i, value in enumerate(down)]
        return tuple(down), mid
