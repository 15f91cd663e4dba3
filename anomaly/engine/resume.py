"""``resume=true``: re-running a sweep skips the jobs that finished and refuses a changed config.

A job is finished when its folder holds ``metrics.json``; its folder's ``manifest.json`` holds the
config it ran with. A re-run into the same sweep folder (``hydra.sweep.dir=<sweep>``) compares the
two: the same config skips a finished job (returning its stored metrics, so an Optuna search or a
report sees them) and reruns an unfinished one; another config stops with the keys that differ.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from anomaly.config.check import ConfigError
from anomaly.engine.manifest import MANIFEST

# Keys that may differ between the first run and its resume without changing what was computed: the flag
# itself, and where things live (a sweep folder moved elsewhere still resumes; its data is fingerprinted).
IGNORED = ("resume", "paths")


def differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two plain configs (added and removed keys included).

    Example:
        >>> differences({"a": 1, "b": {"c": 2}}, {"a": 1, "b": {"c": 3}, "d": 0})
        ['b.c', 'd']
    """
    if isinstance(old, dict) and isinstance(new, dict):
        found: list[str] = []
        for key in sorted(set(old) | set(new), key=str):
            name = f"{prefix}.{key}" if prefix else str(key)
            if name in IGNORED:
                continue
            found += differences(old.get(key, _MISSING), new.get(key, _MISSING), name)
        return found
    return [] if old == new else [prefix or "<config>"]


def finished_metrics(output_dir: Path, config: dict[str, Any]) -> dict[str, float | None] | None:
    """The stored metrics of a finished job with this config, ``None`` for a job to (re)run.

    Raises:
        ConfigError: the folder was run with another config.
    """
    manifest = output_dir / MANIFEST
    if not manifest.is_file():
        return None
    old = json.loads(manifest.read_text()).get("config") or {}
    old_dir = str((old.get("paths") or {}).get("output_dir") or output_dir)
    old = _relocated(old, old_dir, str((config.get("paths") or {}).get("output_dir") or output_dir))
    changed = differences(old, config)
    if changed:
        shown = ", ".join(f"{k} ({_get(old, k)!r} -> {_get(config, k)!r})" for k in changed[:5])
        more = f" and {len(changed) - 5} more" if len(changed) > 5 else ""
        raise ConfigError(
            f"resume=true: {output_dir} was run with another config: {shown}{more}; resume with the same "
            "overrides, or start a new sweep folder (leave out resume=true or set hydra.sweep.dir=...)."
        )
    metrics = output_dir / "metrics.json"
    return flat_metrics(json.loads(metrics.read_text())) if metrics.is_file() else None


def flat_metrics(results: dict[str, Any]) -> dict[str, float | None]:
    """``val/<group>/<metric>`` and ``test/<group>/<metric>`` of a ``metrics.json`` (what ``fit`` returns)."""
    flat: dict[str, float | None] = {}
    for stage, block in (("val", results.get("validation") or {}), ("test", results)):
        groups = {**(block.get("categories") or {}), **{k: block[k] for k in ("mean", "pooled") if k in block}}
        for group, values in groups.items():
            for name, value in (values or {}).items():
                flat[f"{stage}/{group}/{name}"] = value
    return flat


def _relocated(config: Any, old: str, new: str) -> Any:
    """``config`` with paths inside the run folder ``old`` moved to ``new`` (a sweep folder copied or moved)."""
    if isinstance(config, dict):
        return {k: _relocated(v, old, new) for k, v in config.items()}
    if isinstance(config, list):
        return [_relocated(v, old, new) for v in config]
    if isinstance(config, str) and old != new and (config == old or config.startswith(old.rstrip("/") + "/")):
        return new + config[len(old):]
    return config


class _Missing:
    def __repr__(self) -> str:
        return "<absent>"


_MISSING = _Missing()


def _get(config: Any, key: str) -> Any:
    node = config
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node
