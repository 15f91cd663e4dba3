"""Check command-line overrides against the composed config before Hydra runs the job.

The config search path is the one Hydra will use: the package's ``pkg://anomaly.conf`` plus a user's
``--config-dir`` / ``-cd`` folder and ``hydra.searchpath=[...]`` entries, so options a user adds in
their own folder compose and pass.
"""

from __future__ import annotations

import difflib
import os
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_module
from hydra.errors import HydraException

import anomaly.config.resolvers  # noqa: F401 - registers ${anomaly.*} for every entry point
from anomaly.conf import CONF_DIR
from anomaly.config.check import ConfigError, check_override_keys, check_value
from anomaly.utils.errors import user_errors

INTERNAL_GROUPS = {"base", "hydra", "__pycache__"}
# Options served by a Hydra plugin package: (group, option or "*") -> (its module, the package to install).
_OPTUNA = ("hydra_plugins.hydra_optuna_sweeper", "hydra-optuna-sweeper")
_SUBMITIT = ("hydra_plugins.hydra_submitit_launcher", "hydra-submitit-launcher")
PLUGINS = {
    ("hydra/launcher", "joblib"): ("hydra_plugins.hydra_joblib_launcher", "hydra-joblib-launcher"),
    ("hydra/launcher", "submitit_slurm"): _SUBMITIT, ("hydra/launcher", "submitit_local"): _SUBMITIT,
    ("hydra/launcher", "slurm"): _SUBMITIT,
    ("hydra/sweeper", "optuna"): _OPTUNA, ("hydra/sweeper", "optuna_sqlite"): _OPTUNA, ("hparams_search", "*"): _OPTUNA,
}


def check_plugin(group: str, choice: str) -> None:
    """Raise ``ConfigError`` naming the package when ``group=choice`` needs a Hydra plugin that is not installed."""
    import importlib.util

    needed = PLUGINS.get((group, choice)) or (PLUGINS.get((group, "*")) if choice not in ("null", "") else None)
    if needed and importlib.util.find_spec(needed[0]) is None:
        raise ConfigError(f"{group}={choice} needs the Hydra plugin package {needed[1]}, which is not installed; "
                          f"pip install {needed[1]} (pinned in pyproject.toml: pip install -e .).")


def user_config_dirs(argv: Sequence[str]) -> list[Path]:
    """Folders a command line adds to the search path (``--config-dir``/``-cd``, ``hydra.searchpath``)."""
    dirs: list[Path] = []
    for i, arg in enumerate(argv):
        if arg in ("--config-dir", "-cd") and i + 1 < len(argv):
            dirs.append(Path(argv[i + 1]))
        elif arg.startswith("--config-dir="):
            dirs.append(Path(arg.split("=", 1)[1]))
        elif arg.lstrip("+").startswith("hydra.searchpath="):
            for entry in arg.split("=", 1)[1].strip("[]").split(","):
                entry = entry.strip().strip("'\"")
                if entry.startswith("file://"):
                    dirs.append(Path(entry[len("file://"):]))
    return [d.expanduser() for d in dirs]


def group_options(group: str, extra_dirs: Sequence[Path] = ()) -> list[str]:
    """The options of a config group: YAML names in ``<dir>/<group>/`` over the search path."""
    names: set[str] = set()
    for root in (CONF_DIR, *extra_dirs):
        folder = root / group
        if folder.is_dir():
            names.update(p.stem for p in folder.glob("*.yaml"))
    return sorted(names)


def _groups(extra_dirs: Sequence[Path]) -> set[str]:
    found = {p.name for root in (CONF_DIR, *extra_dirs) if root.is_dir() for p in root.iterdir() if p.is_dir()}
    return found - INTERNAL_GROUPS


def precheck(config_name: str, argv: Sequence[str]) -> None:
    """Raise ``ConfigError`` for an unknown group option or key among ``argv``'s overrides.

    Sweep values (``a,b``) are checked one by one for groups; keys are checked once, on the config
    composed with the first value of every swept group.
    """
    check_stray_words(argv)
    extra = user_config_dirs(argv)
    groups = _groups(extra)
    group_overrides: list[str] = []
    key_overrides: list[str] = []
    skip_next = False
    for arg in argv:
        if skip_next:
            skip_next = False
            continue
        if arg in ("--config-dir", "-cd", "--config-name", "-cn", "--config-path", "-cp"):
            skip_next = True
            continue
        if arg.startswith("-") or "=" not in arg:
            continue
        key, value = arg.split("=", 1)
        bare = key.lstrip("+~")
        for choice in value.split(","):
            check_plugin(bare.split("@", 1)[0], choice.strip())
        if bare.startswith("hydra"):
            continue
        group = bare.split("@", 1)[0]
        if group in groups:
            options = group_options(group, extra)
            for choice in [v.strip() for v in value.split(",")] if value not in ("null", "") else []:
                if choice not in options:
                    close = difflib.get_close_matches(choice, options, n=1)
                    hint = f"did you mean {group}={close[0]}?" if close else f"options: {', '.join(options)}."
                    raise ConfigError(f"{group}={choice} is not an option of group '{group}'; {hint}")
            group_overrides.append(f"{key}={value.split(',')[0].strip()}")
        else:
            key_overrides.append(arg)
            check_override_values(arg)
    if not key_overrides:
        return  # group choices are checked above; Hydra composes the rest
    searchpath = [f"hydra.searchpath=[{','.join(f'file://{d.resolve()}' for d in extra)}]"] if extra else []
    try:
        with initialize_config_module("anomaly.conf", version_base="1.3"):
            cfg = compose(config_name, overrides=[*group_overrides, *searchpath])
    except HydraException as error:
        raise ConfigError(str(error).strip().splitlines()[0]) from error
    check_override_keys(cfg, [_first_value(o) for o in key_overrides])


def check_stray_words(argv: Sequence[str]) -> None:
    """Raise ``ConfigError`` for a word that is no ``key=value`` override: most often the rest of a value with a
    space that the shell split off (``input=/tmp/my images/``), so the sentence shows it quoted."""
    from hydra._internal.utils import get_args_parser

    words, _ = get_args_parser().parse_known_args(list(argv))
    overrides = list(words.overrides or [])
    for i, word in enumerate(overrides):
        if "=" in word or word.startswith("~"):
            continue
        before = overrides[i - 1] if i and "=" in overrides[i - 1] else None
        if before is not None:
            joined = shlex.quote(f"{before} {word}")
            raise ConfigError(f"'{word}' is not a key=value override: the shell split '{before} {word}' at a "
                              f"space; quote a value that holds spaces: {joined}.")
        raise ConfigError(f"'{word}' is not a key=value override; write options as key=value (e.g. data.category=wood) "
                          "and quote a value that holds spaces.")


def check_override_values(override: str) -> None:
    """``check_value`` for each value of a ``key=value`` override (every value of a ``a,b`` or ``range`` sweep)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_override(override)
        values = list(parsed.sweep_iterator()) if parsed.is_sweep_override() else [parsed.value()]
    except Exception:  # noqa: BLE001 - Hydra reports a malformed override; interval sweeps are not enumerable
        return
    if not parsed.is_delete():
        for value in values:
            check_value(parsed.key_or_group, value)


def _first_value(override: str) -> str:
    key, value = override.split("=", 1)
    return f"{key}={value.split(',')[0]}"


def launch(config_name: str, hydra_main: Callable[[], Any]) -> None:
    """Entry points' ``main``: check the command line's overrides (one clear line on a typo), then
    run the Hydra main.

    Hydra prints what fails while it sets a run up (creating the run folder, writing ``.hydra/``) as a
    traceback; with ``HYDRA_FULL_ERROR`` set it raises instead, and a user error among those (a read-only
    or full output folder) becomes one sentence here. Bugs keep their (full) traceback.
    """
    with user_errors():
        precheck(config_name, sys.argv[1:])
        full_error = os.environ.get("HYDRA_FULL_ERROR")
        os.environ["HYDRA_FULL_ERROR"] = "1"
        try:
            hydra_main()
        finally:
            if full_error is None:
                os.environ.pop("HYDRA_FULL_ERROR", None)
            else:
                os.environ["HYDRA_FULL_ERROR"] = full_error
