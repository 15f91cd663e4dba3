"""OmegaConf resolvers used by the YAML files in ``anomaly/conf``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

_UNIQUE: dict[str, str] = {}


def _input_size(image_size: Any, crop_size: Any = None) -> Any:
    """The size a model sees: the centre crop when there is one, else the resized image."""
    return image_size if crop_size in (None, "null", "None") else crop_size


def _if_validating(val: Any, yes: Any, no: Any = None) -> Any:
    """``yes`` when the run has a validation split (``data.val`` other than ``none``), else ``no``."""
    return no if val in (None, "none", "None", "null") else yes


def _unique_dir(path: str) -> str:
    """``path``, or ``path_2``, ``path_3`` ... : the first that did not exist, created now (atomic
    ``mkdir``), so two runs started in the same second get two folders. Stable within a process."""
    if path not in _UNIQUE:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        candidate, n = path, 1
        while True:
            try:
                os.mkdir(candidate)
                break
            except FileExistsError:
                n += 1
                candidate = f"{path}_{n}"
        _UNIQUE[path] = candidate
    return _UNIQUE[path]


def _launch_dir() -> str:
    """The folder the command was launched from: Hydra's ``runtime.cwd`` inside a job, else the process's
    working directory. A sweeper resolves ``hydra.sweep.dir`` before any job exists (``${hydra:runtime.cwd}``
    is not set yet), so ``paths.root_dir`` cannot interpolate it directly."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return str(HydraConfig.get().runtime.cwd)
    return os.getcwd()


def _suffix(unit: Any) -> str:
    """``_<unit>`` for a category, nothing for the unified setting's empty unit."""
    return f"_{unit}" if unit not in (None, "") else ""


def _sqlite(folder: str, name: str = "optuna.db") -> str:
    """``sqlite:///<folder>/<name>`` with ``folder`` created: Optuna's storage in a sweep folder that
    Hydra only creates after the study (a re-run into the same folder continues the study)."""
    path = Path(str(folder)).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path / name}"


def register_resolvers() -> None:
    """Register the ``${anomaly.*}`` resolvers (idempotent)."""
    for name, function in {
        "anomaly.input_size": _input_size,
        "anomaly.if_validating": _if_validating,
        "anomaly.unique_dir": _unique_dir,
        "anomaly.suffix": _suffix,
        "anomaly.launch_dir": _launch_dir,
        "anomaly.basename": lambda path: Path(str(path)).name,
        "anomaly.sqlite": _sqlite,
        # The W&B group: a sweep's folder name for its jobs (hydra:mode is MULTIRUN), else the run folder's.
        "anomaly.run_group": lambda mode, sweep, run: Path(str(sweep if str(mode).endswith("MULTIRUN") else run)).name,
    }.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, function)


register_resolvers()
