"""The controlled denoiser: UNet + SG branch + context, predicting ε for a noisy latent."""

from __future__ import annotations

from diffusers import UNet2DConditionModel
from torch import Tensor, nn

from anomaly.nn.diffusion.context import Conditioning
from anomaly.nn.diffusion.control import SemanticGuidedBranch
from anomaly.nn.diffusion.unet import decoder_modules, freeze_encoder


class ControlledDenoiser(nn.Module):
    """ε-prediction of DiAD: the SG branch sees the hint (input image); its residuals steer the UNet.

    The UNet's time embedding, input conv, encoder and middle block are frozen (the paper, whose
    UNet is SD-1.5's); the SG branch (with SFF), the UNet decoder + output head and a learned context
    are trainable (``trainable_modules``). ``train_encoder`` trains the whole UNet instead: for a
    UNet trained from scratch, whose frozen encoder would stay random (DiAD's
    ``model.unet.train_encoder=auto`` chooses it whenever the UNet has no pretrained weights).

    Args:
        unet: the denoiser; branch: the SG branch built from it; context: the conditioning.
        train_encoder: also train the UNet's encoder, middle block and time embedding.
    """

    def __init__(
        self,
        unet: UNet2DConditionModel,
        branch: SemanticGuidedBranch,
        context: Conditioning,
        train_encoder: bool = False,
    ) -> None:
        super().__init__()
        self.unet, self.branch, self.context = unet, branch, context
        self.train_encoder = train_encoder
        if not train_encoder:
            freeze_encoder(self.unet)

    def trainable_modules(self) -> dict[str, nn.Module]:
        """The modules DiAD optimises, by name (the EMA and the optimiser use these)."""
        modules: dict[str, nn.Module] = {"branch": self.branch}
        if self.train_encoder:
            modules["unet"] = self.unet
        else:
            for i, module in enumerate(decoder_modules(self.unet)):
                modules[f"unet_decoder_{i}"] = module
        if any(p.requires_grad for p in self.context.parameters()):
            modules["context"] = self.context
        return modules

    def forward(self, sample: Tensor, timestep: Tensor, hint: Tensor, labels: Tensor | None = None) -> Tensor:
        """Predicted noise for ``sample`` (B×C×h×w latent) at ``timestep`` (B) given ``hint`` (B×3×H×W)."""
        context = self.context(sample.shape[0], labels)
        down, mid = self.branch(sample, timestep, context, hint)
        return self.unet(
            sample,
            timestep,
            encoder_hidden_states=context,
            down_block_additional_residuals=down,
            mid_block_additional_residual=mid,
            return_dict=False,
        )[0]
