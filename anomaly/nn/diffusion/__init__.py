"""DiAD's diffusion blocks on diffusers: autoencoder, UNet denoiser, SG branch, SFF, latents, sampling."""

from anomaly.nn.diffusion.autoencoder import autoencoder_loss, build_autoencoder
from anomaly.nn.diffusion.build import architecture_of
from anomaly.nn.diffusion.context import Conditioning
from anomaly.nn.diffusion.control import SemanticGuidedBranch, residual_layout
from anomaly.nn.diffusion.denoiser import ControlledDenoiser
from anomaly.nn.diffusion.sampling import ddim_reconstruct, make_scheduler, q_sample
from anomaly.nn.diffusion.sff import SpatialFeatureFusion
from anomaly.nn.diffusion.unet import build_unet
from anomaly.nn.diffusion.weights import WeightsError

__all__ = [
    "Conditioning",
    "ControlledDenoiser",
    "SemanticGuidedBranch",
    "SpatialFeatureFusion",
    "WeightsError",
    "architecture_of",
    "autoencoder_loss",
    "build_autoencoder",
    "build_unet",
    "ddim_reconstruct",
    "make_scheduler",
    "q_sample",
    "residual_layout",
]
