"""Checkpoints of this project: found, read safely, checked against the method, resolved for resume."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import get_class

from anomaly.config.targets import check_class, check_data


class CheckpointError(ValueError):
    """A checkpoint path or file that cannot serve the run (missing, not ours, another method)."""


def find_checkpoints(path: str | Path, name: str = "last.ckpt") -> list[Path]:
    """The checkpoint file itself, or every ``name`` under a run folder's ``checkpoints/`` (one per
    category in the ``separate`` setting)."""
    path = Path(path).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        found = sorted(path.glob(f"checkpoints/**/{name}")) or sorted(path.glob(f"**/{name}"))
        if found:
            return found
    raise CheckpointError(f"ckpt_path={path} is neither a checkpoint file nor a run folder with checkpoints/{name}.")


def read_checkpoint(path: str | Path, trusted: tuple[str, ...] = ()) -> dict[str, Any]:
    """A checkpoint's contents, unpickled safely (``weights_only=True``: a file from elsewhere cannot
    run code on load) and checked to name no code off the allow-list (``anomaly.config.targets``:
    hyperparameters, run config, method, everything but tensors), or one sentence saying why not.
    ``trusted``: names the command line itself gives (``train``'s ``model._target_``)."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as error:
        raise CheckpointError(
            f"ckpt_path={path} is not a readable checkpoint ({type(error).__name__}: not a torch.save file, or one "
            "holding objects other than tensors and plain data); give a .ckpt written by anomaly.train."
        ) from error
    if not isinstance(payload, dict) or "state_dict" not in payload:
        raise CheckpointError(f"ckpt_path={path} holds no model weights (no state_dict); give a .ckpt written by anomaly.train.")
    check_data(payload, f"ckpt_path={path}", trusted)
    if payload.get("anomaly_method") is not None:
        check_class(payload["anomaly_method"], f"ckpt_path={path}", "anomaly_method", trusted)
    return payload


def method_of(payload: dict[str, Any], path: str | Path, trusted: tuple[str, ...] = ()) -> type[L.LightningModule]:
    """The LightningModule class that wrote ``payload`` (it must be one, on the allow-list: nothing else
    is imported or built)."""
    name = payload.get("anomaly_method")
    if not name:
        raise CheckpointError(f"ckpt_path={path} was not written by anomaly.train (no method recorded); re-train with "
                              "python -m anomaly.train.")
    check_class(name, f"ckpt_path={path}", "anomaly_method", trusted)
    try:
        method = get_class(str(name))
    except Exception as error:  # noqa: BLE001 - hydra wraps import errors in several types
        raise CheckpointError(f"ckpt_path={path} was written by {name}, which cannot be imported here.") from error
    if not issubclass(method, L.LightningModule):
        raise CheckpointError(f"ckpt_path={path} names {name}, which is not a LightningModule.")
    return method


def check_method(path: str | Path, target: str) -> dict[str, Any]:
    """The checkpoint's contents, refusing one written by another method than ``target``, naming both
    (``target``, the command line's own model, may be named by the checkpoint)."""
    payload = read_checkpoint(path, trusted=(str(target),))
    method = payload.get("anomaly_method")
    if method is not None and method != str(target):
        raise CheckpointError(f"ckpt_path={path} was written by {method}, not {target}; pick a checkpoint of this model.")
    return payload


def resolve_resume(ckpt_path: str | None, checkpoint_dir: Path) -> str | None:
    """``ckpt_path=last`` means this run's (this category's) last checkpoint, if it exists (the command line
    has chosen the run folder: ``anomaly.engine.run_folder``)."""
    if ckpt_path == "last":
        last = checkpoint_dir / "last.ckpt"
        if not last.is_file():
            print(f"ckpt_path=last: no {last} yet; training from the start.")
        return str(last) if last.is_file() else None
    if ckpt_path and Path(ckpt_path).is_dir():
        raise CheckpointError(f"ckpt_path={ckpt_path} is a folder; resume a run with python -m anomaly.train "
                              "ckpt_path=<run folder>, or give a .ckpt file.")
    if ckpt_path and not Path(ckpt_path).is_file():
        raise CheckpointError(f"ckpt_path={ckpt_path} does not exist; give a .ckpt file or ckpt_path=last.")
    return ckpt_path


def load_method(path: str | Path, **overrides: Any) -> L.LightningModule:
    """``Method.load_from_checkpoint(path)`` for the method recorded in the checkpoint, rebuilt from its
    saved hyperparameters (no pretrained file needed); ``overrides`` replace saved arguments."""
    payload = read_checkpoint(path)
    method = method_of(payload, path)
    try:
        return method.load_from_checkpoint(path, map_location="cpu", weights_only=True, **overrides)
    except RuntimeError as error:
        if is_shape_mismatch(error):
            raise CheckpointError(
                f"ckpt_path={path} does not fit {method.__name__} as configured ({mismatch(error)}); "
                "use the checkpoint's own model options."
            ) from error
        raise


def is_shape_mismatch(error: BaseException) -> bool:
    """Whether a ``load_state_dict`` error says the weights have other keys or shapes than the model."""
    return any(text in str(error) for text in ("size mismatch", "Missing key", "Unexpected key"))


def mismatch(error: BaseException) -> str:
    """The first line of a ``load_state_dict`` error that names a parameter."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    named = [line for line in lines if "size mismatch" in line or "key" in line]
    return (named or lines or [type(error).__name__])[0][:200].rstrip(".")
