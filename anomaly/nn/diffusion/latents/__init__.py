"""DiAD's latent kinds (chosen by ``model.latent._target_``) behind one interface, ``Latent``."""

from anomaly.nn.diffusion.latents.autoencoder import AutoencoderLatent
from anomaly.nn.diffusion.latents.base import Latent, LatentContext, build_latent
from anomaly.nn.diffusion.latents.features import FeatureLatent

__all__ = ["AutoencoderLatent", "FeatureLatent", "Latent", "LatentContext", "build_latent"]
