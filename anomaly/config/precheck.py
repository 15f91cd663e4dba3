"""Check command-line overrides against the composed config before Hydra runs the job."""

from __future__ import annotations

import difflib
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.errors import MissingConfigException

from anomaly.config.check import ConfigError, check_override_keys

from anomaly.conf import CONF_DIR


def group_options(group: str) -> list[str]:
    """The options of a config group (YAML file names in ``conf/<group>/``)."""
    folder = CONF_DIR / group
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def precheck(config_name: str, argv: Sequence[str]) -> None:
    """Raise ``ConfigError`` for an unknown group option or key among ``argv``'s overrides.

    Sweep values (``a,b``) are checked one by one for groups; keys are checked once.
    """
    groups = {p.name for p in CONF_DIR.iterdir() if p.is_dir()}
    group_overrides: list[str] = []
    key_overrides: list[str] = []
    for arg in argv:
        if arg.startswith("-") or "=" not in arg:
            continue
        key, value = arg.split("=", 1)
        bare = key.lstrip("+~")
        if bare.startswith("hydra"):
            continue
        if bare in groups:
            for choice in [v.strip() for v in value.split(",")] if value not in ("null", "") else []:
                options = group_options(bare)
                if choice not in options:
                    close = difflib.get_close_matches(choice, options, n=1)
                    hint = f"did you mean {bare}={close[0]}?" if close else f"options: {', '.join(options)}."
                    raise ConfigError(f"{bare}={choice} is not an option of group '{bare}'; {hint}")
            first = value.split(",")[0].strip()
            group_overrides.append(f"{key}={first}")
        else:
            key_overrides.append(arg)
    try:
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            cfg = compose(config_name, overrides=group_overrides)
    except MissingConfigException as error:
        raise ConfigError(str(error).splitlines()[0]) from error
    check_override_keys(cfg, [_first_value(o) for o in key_overrides])


def _first_value(override: str) -> str:
    key, value = override.split("=", 1)
    return f"{key}={value.split(',')[0]}"


def launch(config_name: str, hydra_main: Callable[[], Any]) -> None:
    """Entry points' ``main``: check the command line's overrides (one clear line on a typo), then
    run the Hydra main."""
    try:
        precheck(config_name, sys.argv[1:])
    except ConfigError as error:
        sys.exit(f"Error: {error}")
    hydra_main()
