"""Where pretrained diffusers/LDM weights come from: a folder, a single file, or the hub cache.

Nothing is downloaded unless the caller passes ``download=True`` (the user's ``model.download``).
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

M = TypeVar("M", bound=nn.Module)


class WeightsError(ValueError):
    """A weights option that points at nothing usable."""


def read_state_dict(path: Path) -> dict[str, Tensor]:
    """Tensors of a ``.safetensors`` or torch checkpoint file (``state_dict`` unwrapped if present)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise WeightsError(
            f"{path} pickles Python objects besides tensors (e.g. a training callback), which are not run for "
            "safety; use the .safetensors release of these weights or re-save only their state_dict."
        ) from error
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WeightsError(f"{path} does not hold a state dict; give a .ckpt/.pt/.safetensors of tensors.")
    return state


def from_pretrained(cls: type[M], source: str, subfolder: str, option: str, download: bool) -> M | None:
    """A diffusers model from a local folder (``source`` or ``source/subfolder``) or the hub.

    Returns ``None`` when ``source`` is a single file (the caller converts it).

    Raises:
        WeightsError: the folder holds no such model, or ``source`` is neither a local path nor a
            cached hub model (and ``download`` is off, or the download failed).
    """
    path = Path(source).expanduser()
    if path.is_file():
        return None
    if path.is_dir():
        if (path / subfolder / "config.json").is_file():
            return cls.from_pretrained(str(path), subfolder=subfolder, local_files_only=True)
        if (path / "config.json").is_file():
            return cls.from_pretrained(str(path), local_files_only=True)
        raise WeightsError(
            f"{option}={source} is a folder without a diffusers {cls.__name__} (no config.json in it or in "
            f"{subfolder}/); point it at a Stable Diffusion folder in diffusers layout or a checkpoint file."
        )
    try:
        return cls.from_pretrained(source, subfolder=subfolder, local_files_only=not download)
    except Exception as error:  # noqa: BLE001 - hub and cache lookups fail in many ways
        if not download:
            raise WeightsError(
                f"{option}={source} is not a local path and not in the Hugging Face cache; set {option} to a "
                "local folder or checkpoint file, or set model.download=true to fetch it from the hub."
            ) from error
        raise WeightsError(
            f"{option}={source}: downloading from the Hugging Face hub failed ({type(error).__name__}); "
            f"without internet set {option} to a local folder or checkpoint file."
        ) from error


def load_checked(module: nn.Module, state: dict[str, Any], option: str, source: str) -> None:
    """``load_state_dict`` that turns a mismatch into one sentence naming the option."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    wrong = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or wrong:
        example = (missing or wrong)[0]
        raise WeightsError(
            f"{option}={source} does not fit the configured {type(module).__name__} ({len(missing)} tensors "
            f"missing, {len(wrong)} of another shape, e.g. {example}); match the preset to the weights."
        )
    module.load_state_dict({k: state[k] for k in own}, strict=True)
