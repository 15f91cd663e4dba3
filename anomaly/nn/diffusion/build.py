"""What every diffusers model builder here shares: presets, image-side checks, stored architectures.

DiAD's UNet and autoencoder (``unet.py``, ``autoencoder.py``) and the SDAS DDPM's UNet
(``anomaly/nn/ddpm.py``) are all a named preset of constructor arguments plus a config's
overrides; each is rebuilt from its stored ``architecture_of`` without reading weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

from anomaly.nn.diffusion.presets import DiffusionConfigError

M = TypeVar("M")


def resolve(
    presets: dict[str, dict[str, Any]], name: str, option: str, error: type[Exception] = DiffusionConfigError,
    **overrides: Any,
) -> dict[str, Any]:
    """Constructor arguments of preset ``name`` with ``overrides`` applied (lists become tuples).

    Raises:
        error: ``name`` is not a preset; the message names ``option`` and the choices.
    """
    if name not in presets:
        raise error(f"{option}={name!r} is not a preset; choose one of {sorted(presets)}.")
    config = dict(presets[name])
    for key, value in overrides.items():
        config[key] = tuple(value) if isinstance(value, list) else value
    return config


def build(cls: type[M], config: dict[str, Any] | None = None, architecture: dict[str, Any] | None = None) -> M:
    """A randomly initialised diffusers model: of a stored ``architecture`` (``architecture_of``) when given,
    else of constructor arguments ``config`` (an unknown key fails here rather than being ignored)."""
    if architecture is not None:
        return cls.from_config(dict(architecture))  # type: ignore[attr-defined]
    return cls(**dict(config or {}))


def levels_factor(block_out_channels: Sequence[int]) -> int:
    """How much a UNet of these levels shrinks its input: a side must be a multiple of this."""
    return 2 ** (len(block_out_channels) - 1)


def check_sides(
    size: int | Sequence[int], factor: int, option: str, why: str, error: type[Exception] = DiffusionConfigError
) -> None:
    """Every side of ``size`` must be a multiple of ``factor``; else ``error`` naming ``option``, the reason
    and the nearest sizes that fit."""
    sides = [size, size] if isinstance(size, int) else list(size)
    for side in sides:
        if int(side) % factor:
            lower = int(side) // factor * factor
            near = f"{lower} or {lower + factor}" if lower else str(factor)
            shown = list(size) if not isinstance(size, int) else size
            raise error(f"{option}={shown} does not fit {why}: image sides must be multiples of {factor}; use e.g. {near}.")


def architecture_of(model: Any) -> dict[str, Any]:
    """A diffusers model's public config as plain Python (lists, no ``_``-keys).

    ``build_unet(architecture=...)`` / ``build_autoencoder(architecture=...)`` rebuild exactly this
    architecture without reading any weights file (checkpoints store it for re-testing).
    """
    return {
        key: list(value) if isinstance(value, tuple) else value
        for key, value in dict(model.config).items()
        if not key.startswith("_")
    }
