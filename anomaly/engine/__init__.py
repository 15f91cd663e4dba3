"""The engine every entry point uses: builds the run's objects, runs units, checks checkpoints, aggregates.

``fit(cfg)`` trains, selects on validation and tests (``anomaly.train``); ``retest(cfg)`` re-tests
checkpoints (``anomaly.evaluate``). Entry points stay thin Hydra mains around them. The names are
imported on first use, so light readers of run folders (``anomaly.report`` reads ``engine.manifest``)
do not import Lightning.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {"CheckpointError": "checkpoints", "find_checkpoints": "checkpoints", "load_method": "checkpoints",
            "read_checkpoint": "checkpoints", "fit": "run", "retest": "run"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"anomaly.engine.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'anomaly.engine' has no attribute {name!r}")
