"""The folder a ``python -m anomaly.train`` command runs in, settled before Hydra creates one.

``ckpt_path=last`` without ``hydra.run.dir`` means the most recent run under ``<paths.log_dir>/runs``
whose ``manifest.json`` holds this command's config (``resume.RESUME_IGNORED`` aside); ``ckpt_path=<run
folder>`` means that run, with its recorded overrides and then the ones typed. Both become
``hydra.run.dir=<run> ckpt_path=last``. The run folder is locked (``lock.acquire``; a new one after the
overrides are checked) and a resumed run's config compared, so a second training into it, or a resume
with another config, stops before Hydra writes anything there.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from anomaly.config.check import ConfigError
from anomaly.engine.lock import acquire
from anomaly.engine.manifest import MANIFEST
from anomaly.engine.resume import RESUME_IGNORED, check_same_run, differences, shown

_FLAGS_WITH_VALUE = ("--config-dir", "-cd", "--config-name", "-cn", "--config-path", "-cp")


def resume_command(argv: Sequence[str], config_name: str = "train") -> list[str]:
    """The command line to run instead of ``argv``: ``ckpt_path=last`` / ``<run folder>`` made explicit.

    Raises:
        ConfigError: nothing to resume, or a folder that is not a run.
    """
    argv = list(argv)
    overrides = _overrides(argv)
    ckpt = _value(overrides, "ckpt_path")
    run_dir = _value(overrides, "hydra.run.dir")
    if _multirun(argv):
        if ckpt == "last" and _value(overrides, "hydra.sweep.dir") is None:
            raise ConfigError("ckpt_path=last in a sweep resumes the jobs of an earlier sweep: add "
                              "hydra.sweep.dir=<sweep folder> (and resume=true to skip its finished jobs).")
        return argv
    if ckpt not in (None, "null", "None", "last") and Path(ckpt).expanduser().is_dir():
        argv = _run_folder_command(argv, Path(ckpt).expanduser(), run_dir)
        _resumable(argv, Path(ckpt).expanduser(), config_name)
    elif ckpt == "last" and run_dir is None:
        folder = find_run(argv, config_name)
        acquire(folder)
        argv = [*argv, f"hydra.run.dir={_quoted(str(folder))}"]
    elif ckpt == "last" and "${" not in run_dir:
        _resumable(argv, Path(run_dir).expanduser(), config_name)
    return argv


def _resumable(argv: Sequence[str], folder: Path, config_name: str) -> None:
    """Lock a run folder to resume and refuse another config (``resume.check_same_run``), before Hydra
    writes its files there."""
    if not (folder / MANIFEST).is_file():
        return
    from anomaly.config.precheck import precheck

    acquire(folder)
    precheck(config_name, argv)
    with _composed(argv, config_name) as (_, resolved):
        check_same_run(folder, resolved(folder))


def lock_run_folder(argv: Sequence[str]) -> None:
    """Lock the folder a single run names (``hydra.run.dir``) before Hydra writes into it; a new folder
    Hydra makes itself, and sweep jobs' folders, are locked by ``engine.fit``.

    Raises:
        RunLockedError: another training holds the folder.
    """
    run_dir = _value(_overrides(argv), "hydra.run.dir")
    if not _multirun(argv) and run_dir is not None and "${" not in run_dir:
        acquire(Path(run_dir).expanduser())


def find_run(argv: Sequence[str], config_name: str = "train") -> Path:
    """The most recent run folder under ``<paths.log_dir>/runs`` made with ``argv``'s config.

    Raises:
        ConfigError: none is, naming the most recent run's differences and what to add.
    """
    from anomaly.config.precheck import precheck

    precheck(config_name, argv)  # a typo is named as such, not as "no run has this config"
    with _composed(argv, config_name) as (task, set_output_dir):
        log_dir = Path(str(task.paths.log_dir)).expanduser()
        runs = sorted(((_started(m), m.parent) for m in log_dir.glob("runs/*/*/" + MANIFEST)), reverse=True)
        closest: tuple[Path, dict[str, Any], dict[str, Any], list[str]] | None = None
        for _, folder in runs:
            try:
                old = json.loads((folder / MANIFEST).read_text()).get("config") or {}
            except (OSError, ValueError):
                continue
            new = set_output_dir(folder)
            changed = differences(old, new, ignored=RESUME_IGNORED)
            if not changed:
                print(f"ckpt_path=last: resuming {folder} (its last.ckpt, in its folder).")
                return folder
            closest = closest or (folder, old, new, changed)
    if closest is None:
        raise ConfigError(f"ckpt_path=last: no run under {log_dir / 'runs'} to resume; give the run folder "
                          "(ckpt_path=<run folder>), or leave out ckpt_path to start a new run.")
    folder, old, new, changed = closest
    raise ConfigError(f"ckpt_path=last: no run under {log_dir / 'runs'} has this config (the most recent, {folder}, "
                      f"differs in {shown(old, new, changed)}); repeat its overrides, or give its folder: "
                      f"ckpt_path={folder}.")


def _run_folder_command(argv: list[str], folder: Path, run_dir: str | None) -> list[str]:
    """``ckpt_path=<run folder>``: its recorded overrides, then the typed ones, in its folder from last.ckpt."""
    if run_dir is not None and Path(run_dir).expanduser().resolve() != folder.resolve():
        raise ConfigError(f"ckpt_path={folder} resumes that run in its own folder; leave out hydra.run.dir, or give "
                          f"a checkpoint file (ckpt_path={folder}/checkpoints/last.ckpt) to go on in another folder.")
    try:
        recorded = json.loads((folder / MANIFEST).read_text()).get("overrides") or []
    except (OSError, ValueError) as error:
        raise ConfigError(f"ckpt_path={folder} is a folder without a readable {MANIFEST}, so not a run of "
                          "anomaly.train; give a run folder or a .ckpt file.") from error
    typed = [a for a in argv if _key(a) not in ("ckpt_path", "hydra.run.dir")]
    keys = {_key(a) for a in typed}
    kept = [o for o in recorded if _key(o) not in keys and _key(o) != "ckpt_path"]
    return [*kept, *typed, "ckpt_path=last", f"hydra.run.dir={_quoted(str(folder.resolve()))}"]


class _composed:
    """The command's config composed as Hydra will (``task``), and a function resolving it for a run folder."""

    def __init__(self, argv: Sequence[str], config_name: str) -> None:
        self.argv, self.config_name = argv, config_name

    def __enter__(self) -> tuple[Any, Any]:
        from hydra import compose, initialize_config_module
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode
        from omegaconf import OmegaConf, open_dict, read_write

        from anomaly.config.precheck import user_config_dirs

        extra = user_config_dirs(self.argv)
        searchpath = [f"hydra.searchpath=[{','.join(f'file://{d.resolve()}' for d in extra)}]"] if extra else []
        overrides = [a for a in _overrides(self.argv) if _key(a) not in ("hydra.run.dir", "hydra.sweep.dir")]
        with initialize_config_module("anomaly.conf", version_base="1.3"):
            full = compose(self.config_name, overrides=[*overrides, *searchpath, "hydra.run.dir=."],
                           return_hydra_config=True)
        with read_write(full.hydra), open_dict(full.hydra):
            full.hydra.runtime.cwd = os.getcwd()
            full.hydra.runtime.output_dir = os.getcwd()
            full.hydra.mode = RunMode.RUN
        self.before = HydraConfig.instance().cfg
        HydraConfig.instance().set_config(full)
        task = OmegaConf.masked_copy(full, [k for k in full if k != "hydra"])

        def set_output_dir(folder: Path) -> dict[str, Any]:
            runtime = HydraConfig.get().runtime
            with read_write(runtime):
                runtime.output_dir = str(folder)
            return OmegaConf.to_container(task, resolve=True, throw_on_missing=False)  # type: ignore[return-value]

        return task, set_output_dir

    def __exit__(self, *exc: object) -> None:
        from hydra.core.hydra_config import HydraConfig

        HydraConfig.instance().cfg = self.before


def _started(manifest: Path) -> tuple[float, float]:
    """When the run of ``manifest`` started (its recorded time, then the file's), for ordering."""
    try:
        started = json.loads(manifest.read_text()).get("started")
        stamp = datetime.strptime(started, "%Y-%m-%dT%H:%M:%S%z").timestamp()
    except (OSError, ValueError, TypeError):
        stamp = 0.0
    try:
        return stamp, manifest.stat().st_mtime
    except OSError:
        return stamp, 0.0


def _multirun(argv: Sequence[str]) -> bool:
    return any(a in ("-m", "--multirun") for a in argv)


def _overrides(argv: Sequence[str]) -> list[str]:
    """The ``key=value`` overrides of a command line (flags and their values left out)."""
    found, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in _FLAGS_WITH_VALUE:
            skip = True
        elif not arg.startswith("-") and ("=" in arg or arg.startswith("~")):  # ~key deletes a key
            found.append(arg)
    return found


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _value(overrides: Sequence[str], key: str) -> str | None:
    """The last value given to ``key`` (quotes removed as Hydra's parser does), or ``None``."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    for override in reversed(overrides):
        if _key(override) == key:
            try:
                value = OverridesParser.create().parse_override(override).value()
            except Exception:  # noqa: BLE001 - Hydra reports a malformed override itself
                return override.split("=", 1)[1]
            return None if value is None else str(value)
    return None


def _quoted(path: str) -> str:
    """``path`` as an override value (quoted when Hydra's grammar needs it)."""
    return path if all(c.isalnum() or c in "/._-+@:" for c in path) else "'" + path.replace("'", "\\'") + "'"
