"""Resuming: ``ckpt_path=last`` / ``ckpt_path=<run folder>`` for one run, ``resume=true`` for a sweep.

One run: ``ckpt_path=last`` without ``hydra.run.dir`` resumes, in its own folder, the most recent run
under ``<paths.log_dir>/runs`` whose ``manifest.json`` holds this command's config (where things live,
``ckpt_path`` and the trainer's length limits aside: a run may be extended); ``ckpt_path=<run folder>``
resumes that run with its recorded overrides plus the ones typed. :func:`resume_command` turns both into
``hydra.run.dir=<run> ckpt_path=last`` before Hydra creates a folder, and locks the run folder.

A sweep: a job is finished when its folder holds ``metrics.json``; its folder's ``manifest.json`` holds
the config it ran with. A re-run into the same sweep folder (``hydra.sweep.dir=<sweep>``) compares the
two: the same config skips a finished job (returning its stored metrics, so an Optuna search or a
report sees them) and reruns an unfinished one; another config stops with the keys that differ.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from anomaly.config.check import ConfigError
from anomaly.engine.manifest import MANIFEST

# Keys that may differ between the first run and its resume without changing what was computed: the flags
# themselves, and where things live (a sweep folder moved elsewhere still resumes; its data is fingerprinted).
IGNORED = ("resume", "paths", "ckpt_path", "feasibility")
# ... and for one run resumed in its folder: the checkpoint option and how long the trainer may go on.
RESUME_IGNORED = (*IGNORED, "trainer.max_epochs", "trainer.max_steps", "trainer.max_time",
                  "trainer.min_epochs", "trainer.min_steps")


def differences(old: Any, new: Any, prefix: str = "", ignored: tuple[str, ...] = IGNORED) -> list[str]:
    """Dotted keys whose values differ between two plain configs (removed keys included).

    A key only ``new`` has is an option a later version of anomaly added: its default keeps what the
    earlier version did, so a run made before it still resumes (the key is not a difference).

    Example:
        >>> differences({"a": 1, "b": {"c": 2}, "e": 0}, {"a": 1, "b": {"c": 3}, "d": 0})
        ['b.c', 'e']
    """
    if isinstance(old, dict) and isinstance(new, dict):
        found: list[str] = []
        for key in sorted(set(old) | set(new), key=str):
            name = f"{prefix}.{key}" if prefix else str(key)
            if name in ignored or key not in old:
                continue
            found += differences(old.get(key, _MISSING), new.get(key, _MISSING), name, ignored)
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
    old, changed = changed_keys(output_dir, config)
    if changed:
        raise ConfigError(
            f"resume=true: {output_dir} was run with another config: {shown(old, config, changed)}; resume with "
            "the same overrides, or start a new sweep folder (leave out resume=true or set hydra.sweep.dir=...)."
        )
    metrics = output_dir / "metrics.json"
    return flat_metrics(json.loads(metrics.read_text())) if metrics.is_file() else None


def changed_keys(output_dir: Path, config: dict[str, Any],
                 ignored: tuple[str, ...] = IGNORED) -> tuple[dict[str, Any], list[str]]:
    """The config in ``<output_dir>/manifest.json`` (its paths moved to ``config``'s run folder) and the
    keys where ``config`` differs from it."""
    old = json.loads((output_dir / MANIFEST).read_text()).get("config") or {}
    old_dir = str((old.get("paths") or {}).get("output_dir") or output_dir)
    old = _relocated(old, old_dir, str((config.get("paths") or {}).get("output_dir") or output_dir))
    return old, differences(old, config, ignored=ignored)


def shown(old: dict[str, Any], new: dict[str, Any], changed: list[str]) -> str:
    """``key (old -> new)`` for the first five changed keys."""
    text = ", ".join(f"{k} ({_short(_get(old, k))} -> {_short(_get(new, k))})" for k in changed[:5])
    return text + (f" and {len(changed) - 5} more" if len(changed) > 5 else "")


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def check_same_run(output_dir: Path, config: dict[str, Any]) -> None:
    """Refuse to resume a run in its folder with another config (``RESUME_IGNORED`` keys may differ).

    Raises:
        ConfigError: naming the keys that differ.
    """
    if (output_dir / MANIFEST).is_file():
        old, changed = changed_keys(output_dir, config, RESUME_IGNORED)
        if changed:
            raise ConfigError(
                f"cannot resume {output_dir}: it was run with another config: {shown(old, config, changed)}; resume "
                "with its options (ckpt_path=<run folder> re-applies them), or go on from its checkpoint in a new "
                "folder (ckpt_path=<run>/checkpoints/last.ckpt, without hydra.run.dir)."
            )


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
