"""What DiAD's diffusion runs in: the latent interface, and building a latent from its config node.

A latent kind is chosen by the ``_target_`` of ``model.latent`` (``AutoencoderLatent``: the paper's
pixel autoencoder; ``FeatureLatent``: the scoring backbone's standardised features); DiAD talks to
every kind through ``Latent`` alone.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from anomaly.config.targets import TRUST_ENV, is_allowed
from anomaly.nn.diffusion.presets import DiffusionConfigError

KINDS = ("anomaly.nn.diffusion.latents.AutoencoderLatent", "anomaly.nn.diffusion.latents.FeatureLatent")
Broadcast = Callable[[Tensor], Tensor]


@dataclass
class LatentContext:
    """What DiAD shares with its latent: the frozen scoring ``backbone``, the side the backbone sees
    images at (``model.scoring.resize``) and whether hub ids may be downloaded (``model.download``)."""

    backbone: nn.Module
    resize: int | None = None
    download: bool = False


class Latent(nn.Module):
    """A latent space for DiAD's denoiser.

    Attributes:
        channels: latent channels; downsampling: image side / latent side.
        fit_steps: training steps at the start of the run that fit the latent itself (``fitting``,
            ``fit_loss``) before the diffusion phase; 0: none.
        fit_name: log prefix of those steps (``train/<fit_name>_loss``).
    """

    channels: int
    downsampling: int
    fit_steps: int = 0
    fit_name: str = "latent"

    def encode(self, image: Tensor, sample: bool = False, cached: bool = False) -> Tensor:
        """Latents of ImageNet-normalised images (``sample``: a posterior sample where the kind has one;
        ``cached``: may use a cache of normal training images)."""
        raise NotImplementedError

    def decode(self, latent: Tensor) -> Tensor:
        """ImageNet-normalised images of latents (for a feature latent: its viewing decoder's)."""
        raise NotImplementedError

    def fitting(self, step: int) -> bool:
        """Whether training step ``step`` fits the latent itself instead of the denoiser."""
        return False

    def fit_loss(self, image: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """The loss of a fitting step on normal images and its detached parts for logging."""
        raise NotImplementedError(f"{type(self).__name__} has no fitting phase.")

    def prepare(self, image: Tensor, broadcast: Broadcast) -> None:
        """Called with every diffusion-phase batch of normal images before it is encoded; the first call
        sets what the latent estimates from data (``broadcast`` shares rank 0's values under DDP)."""

    def auxiliary_losses(self, z0: Tensor, image: Tensor) -> dict[str, Tensor]:
        """Losses trained beside the denoiser (named, added to its loss), from the batch's latents."""
        return {}

    def optimizer_groups(self) -> list[tuple[dict[str, Any], str]]:
        """AdamW parameter groups of the latent's own trained parts, each with the LR schedule it follows:
        ``fit`` (cosine to 0 over ``fit_steps``) or ``diffusion`` (the denoiser's warm-up)."""
        return []

    def distances(self, scorer: nn.Module, image: Tensor, z0: Tensor, denoised: Tensor, reconstruction: Tensor) -> Tensor:
        """The B×1×H×W map before blur and pooling (``FeatureDistance.distances``/``feature_distances``)."""
        raise NotImplementedError

    def check_scoring(self, layers: Sequence[str] | None) -> None:
        """Fail at construction when ``model.scoring.layers`` cannot be scored with this latent."""

    def restore_overrides(self) -> dict[str, Any]:
        """Arguments that rebuild this latent without reading pretrained files (see ``AnomalyModule``)."""
        return {}


def build_latent(spec: Mapping[str, Any] | DictConfig | None, context: LatentContext) -> Latent:
    """The latent of a ``model.latent`` node: its ``_target_`` class called with ``context`` and the rest.

    Raises:
        DiffusionConfigError: the node names no latent class.
    """
    node = OmegaConf.to_container(spec, resolve=True) if isinstance(spec, DictConfig) else spec
    if not isinstance(node, Mapping) or "_target_" not in node:
        raise DiffusionConfigError(
            f"model.latent={node!r} names no latent kind; give a node with _target_: one of {', '.join(KINDS)}."
        )
    args = {str(k): v for k, v in node.items() if k != "_target_"}
    if not is_allowed(node["_target_"]):  # a checkpoint's hyperparameters may name it: check before importing
        raise DiffusionConfigError(
            f"model.latent._target_={node['_target_']} cannot be imported: it is not a latent class of the anomaly "
            f"package nor on the allow-list ({TRUST_ENV}); choose one of {', '.join(KINDS)}."
        )
    try:
        cls = get_class(str(node["_target_"]))
    except Exception as error:  # noqa: BLE001 - hydra wraps import errors in several types
        raise DiffusionConfigError(
            f"model.latent._target_={node['_target_']} cannot be imported; choose one of {', '.join(KINDS)}."
        ) from error
    if not (isinstance(cls, type) and issubclass(cls, Latent)):
        raise DiffusionConfigError(f"model.latent._target_={node['_target_']} is not a latent; choose one of {', '.join(KINDS)}.")
    accepted = inspect.signature(cls.__init__).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values()):
        unknown = sorted(set(args) - set(accepted))
        if unknown:
            options = sorted(set(accepted) - {"self", "context"})
            raise DiffusionConfigError(
                f"model.latent has {unknown}, which {cls.__name__} does not take; its options are {options}."
            )
    return cls(context=context, **args)
