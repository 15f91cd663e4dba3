"""The run manifest (``manifest.json``): what a run was, so it can be compared, resumed and reported.

Written when a run starts (``status: running``) and again when it ends (``finished``, or ``failed`` with
the error's type and message): the resolved config, seed, command-line overrides, library versions
(``results.library_versions``, the one list), git commit and dirty flag, the data set fingerprint, split
sizes, host, device, wall times; a resumed run lists its earlier sessions. ``anomaly.report``,
``resume=true`` and ``ckpt_path=last`` read it.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import socket
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from anomaly.engine.results import library_versions
from anomaly.utils.atomic import atomic_write_json

MANIFEST = "manifest.json"
SOURCE_ROOT = Path(__file__).resolve().parents[2]


def git_state(root: Path = SOURCE_ROOT) -> dict[str, Any]:
    """``{"commit", "dirty"}`` of the checkout the code runs from (``None`` outside a git checkout)."""
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        status = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": bool(status.strip())}


def fingerprint(files: Iterable[Path], root: Path) -> dict[str, Any]:
    """File count and SHA-256 of the sorted ``relative path<TAB>size`` lines of ``files``.

    Example:
        >>> fingerprint([], Path("."))["files"]
        0
    """
    lines = []
    for path in {Path(p) for p in files}:
        try:
            name = path.relative_to(root).as_posix()
        except ValueError:
            name = path.as_posix()
        lines.append(f"{name}\t{path.stat().st_size}")
    digest = hashlib.sha256("\n".join(sorted(lines)).encode()).hexdigest()
    return {"files": len(lines), "sha256": digest}


def data_record(datamodule: Any) -> dict[str, Any]:
    """The data set a run read: root, categories, fingerprint of every image and mask, split sizes."""
    files: list[Path] = []
    sizes: dict[str, dict[str, int]] = {}
    held = datamodule.held_out()
    for split in ("train", "test"):
        for record in datamodule.records(split):
            files.append(record.image)
            if record.mask is not None:
                files.append(record.mask)
            counts = sizes.setdefault(record.category, {"train": 0, "val": 0, "test": 0})
            if record in held:
                counts["val"] += 1
            elif split == "test" or record.label == 0:
                counts[split] += 1
    return {"root": str(datamodule.root), "categories": list(datamodule.categories),
            "setting": datamodule.setting, "val": datamodule.val,
            "fingerprint": fingerprint(files, Path(datamodule.root)), "split_sizes": sizes}


def device_record(trainer: Any | None = None) -> dict[str, Any]:
    """The accelerator the run used (and the GPU's name when there is one)."""
    import torch

    record: dict[str, Any] = {"cuda_available": torch.cuda.is_available(), "threads": torch.get_num_threads()}
    if trainer is not None:
        record.update(accelerator=type(trainer.accelerator).__name__, devices=int(trainer.num_devices),
                      nodes=int(trainer.num_nodes), world_size=int(trainer.world_size),
                      precision=str(trainer.precision))
    if torch.cuda.is_available():
        record["gpu"] = torch.cuda.get_device_name(0)
    return record


class Manifest:
    """``<run>/manifest.json``, written on rank zero only, atomically, at start and at the end.

    Args:
        output_dir: the run folder.
        config: the resolved run config (plain containers).
        overrides: the job's command-line overrides (Hydra's ``overrides.task``).
        sweep: where the job sits in a sweep (``dir``, ``job``), or ``None`` for a single run.
        choices: the config group options it composed (``model: padim``, ``data: synthetic`` ...).
    """

    def __init__(self, output_dir: Path, config: dict[str, Any], overrides: list[str],
                 sweep: dict[str, Any] | None = None, choices: dict[str, Any] | None = None) -> None:
        self.path = Path(output_dir) / MANIFEST
        self.started = time.time()
        self.data: dict[str, Any] = {
            "status": "running", "config": config, "seed": config.get("seed"), "overrides": overrides,
            "sweep": sweep, "choices": choices or {}, "versions": library_versions(), "git": git_state(),
            "host": socket.gethostname(), "platform": platform.platform(), "pid": os.getpid(),
            "device": device_record(), "started": _iso(self.started),
        }

    def update(self, **fields: Any) -> None:
        """Add fields and rewrite the file."""
        self.data.update(fields)
        self.write()

    def finish(self, timing: dict[str, Any], trainer: Any | None = None) -> None:
        """Record the end: status, per-unit fit/test seconds, device, wall time."""
        end = time.time()
        self.update(status="finished", timing=timing, device=device_record(trainer), finished=_iso(end),
                    wall_s=round(end - self.started, 3))

    def write(self) -> None:
        """Write the file (on the global rank zero process only)."""
        from lightning.fabric.utilities.rank_zero import rank_zero_only

        if getattr(rank_zero_only, "rank", 0) == 0:
            atomic_write_json(self.path, self.data)
        if self.data.get("status") == "running":
            _running[self.path] = self
        else:
            _running.pop(self.path, None)

    def fail(self, error: BaseException) -> None:
        """Record that the run stopped on ``error`` (any exception, ``KeyboardInterrupt`` included)."""
        end = time.time()
        self.update(status="failed", error=error_record(error), failed=_iso(end), wall_s=round(end - self.started, 3))


_running: dict[Path, Manifest] = {}  # manifest path -> this process's run that wrote it as running


def mark_failed(output_dir: str | Path, error: BaseException) -> None:
    """Mark ``<output_dir>/manifest.json`` failed if this process wrote it and it is still running."""
    manifest = _running.get(Path(output_dir) / MANIFEST)
    if manifest is not None:
        manifest.fail(error)


def error_record(error: BaseException) -> dict[str, str]:
    """``{"type", "message"}`` of what stopped a run; Lightning turns Ctrl+C into ``SystemExit(1)``, named
    after the ``KeyboardInterrupt`` it handled."""
    if isinstance(error, SystemExit) and isinstance(error.__context__, KeyboardInterrupt):
        error = error.__context__
    kind = type(error)
    name = kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
    return {"type": name, "message": str(error)[:2000]}


def earlier_sessions(output_dir: str | Path) -> list[dict[str, Any]]:
    """The sessions recorded in ``<output_dir>/manifest.json`` before this one (a resumed run), oldest first."""
    path = Path(output_dir) / MANIFEST
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    keys = ("started", "finished", "failed", "status", "error", "overrides", "host", "pid")
    return [*old.get("earlier", []), {k: old[k] for k in keys if k in old}]


def _iso(stamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(stamp))
