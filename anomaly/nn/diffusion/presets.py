"""Named sizes of DiAD's diffusers blocks: the paper's (SD-1.5 / LDM KL-f8) and a CPU preset.

Each preset is a dict of constructor arguments of the diffusers class; ``build_unet`` and
``build_autoencoder`` take a preset name plus keyword overrides (``build.resolve``), so a config can
say ``unet: {preset: sd15}`` or ``unet: {preset: cpu, block_out_channels: [32, 64, 64]}``.
"""

from __future__ import annotations

from typing import Any


class DiffusionConfigError(ValueError):
    """A DiAD option that cannot be honoured (the message names the option and the fix)."""


_CROSS_DOWN = "CrossAttnDownBlock2D"
_CROSS_UP = "CrossAttnUpBlock2D"

UNET_PRESETS: dict[str, dict[str, Any]] = {
    # Stable Diffusion 1.5 denoiser: 859.5 M parameters.
    "sd15": {
        "sample_size": 32,
        "in_channels": 4,
        "out_channels": 4,
        "block_out_channels": (320, 640, 1280, 1280),
        "layers_per_block": 2,
        "down_block_types": (_CROSS_DOWN, _CROSS_DOWN, _CROSS_DOWN, "DownBlock2D"),
        "up_block_types": ("UpBlock2D", _CROSS_UP, _CROSS_UP, _CROSS_UP),
        "cross_attention_dim": 768,
        "attention_head_dim": 8,
        "norm_num_groups": 32,
    },
    # 64² images through a 4× autoencoder: a 16² latent, three levels (16, 8, 4), attention on the
    # two inner levels. 6.5 M parameters; its SG branch 2.8 M.
    "cpu": {
        "sample_size": 16,
        "in_channels": 4,
        "out_channels": 4,
        "block_out_channels": (64, 128, 128),
        "layers_per_block": 2,
        "down_block_types": ("DownBlock2D", _CROSS_DOWN, _CROSS_DOWN),
        "up_block_types": (_CROSS_UP, _CROSS_UP, "UpBlock2D"),
        "cross_attention_dim": 64,
        "attention_head_dim": 4,
        "norm_num_groups": 32,
    },
}

AUTOENCODER_PRESETS: dict[str, dict[str, Any]] = {
    # LDM KL-f8 (= the SD-1.5 VAE): 83.7 M parameters, 256² -> 4×32×32.
    "kl-f8": {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ("DownEncoderBlock2D",) * 4,
        "up_block_types": ("UpDecoderBlock2D",) * 4,
        "block_out_channels": (128, 256, 512, 512),
        "layers_per_block": 2,
        "latent_channels": 4,
        "norm_num_groups": 32,
        "sample_size": 256,
        "scaling_factor": 0.18215,
    },
    # Small KL-f4: 64² -> 4×16×16. The latent scale is estimated from data (``latent_scale: auto``).
    "cpu": {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ("DownEncoderBlock2D",) * 3,
        "up_block_types": ("UpDecoderBlock2D",) * 3,
        "block_out_channels": (32, 64, 64),
        "layers_per_block": 1,
        "latent_channels": 4,
        "norm_num_groups": 16,
        "sample_size": 64,
        "scaling_factor": 1.0,
        "mid_block_add_attention": False,
    },
}

# The 1000-step "scaled linear" schedule of SD-1.5 / LDM, DDIM steps as the LDM sampler places them.
SD_SCHEDULER: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "prediction_type": "epsilon",
}
