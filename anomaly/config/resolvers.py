"""OmegaConf resolvers used by the YAML files in ``conf/``."""

from __future__ import annotations

from typing import Any

from omegaconf import OmegaConf


def _input_size(image_size: Any, crop_size: Any = None) -> Any:
    """The size a model sees: the centre crop when there is one, else the resized image."""
    return image_size if crop_size in (None, "null", "None") else crop_size


def register_resolvers() -> None:
    """Register ``${anomaly.input_size:image,crop}`` (idempotent)."""
    if not OmegaConf.has_resolver("anomaly.input_size"):
        OmegaConf.register_new_resolver("anomaly.input_size", _input_size)


register_resolvers()
