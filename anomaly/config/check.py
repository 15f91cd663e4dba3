"""Fail in a second, not after an hour: config keys checked against what they configure.

Every node with a ``_target_`` is checked against its callable's signature (following ``**kwargs``
to the base classes' constructors); a key nobody accepts is an error that suggests the closest name.
Command-line overrides of keys that do not exist get the same treatment before Hydra composes.
"""

from __future__ import annotations

import difflib
import inspect
import re
from collections.abc import Iterable
from typing import Any

from hydra.utils import get_object
from omegaconf import DictConfig, ListConfig, OmegaConf

HYDRA_KEYS = {"_target_", "_partial_", "_recursive_", "_convert_", "_args_"}


class ConfigError(ValueError):
    """A config key or value that no component accepts."""


def accepted_parameters(target: Any) -> tuple[set[str], bool]:
    """Names ``target`` accepts and whether it also takes arbitrary keywords.

    A class whose ``__init__`` forwards ``**kwargs`` to ``super()`` accepts its bases' parameters too.
    """
    names: set[str] = set()
    callables: Iterable[Any] = (
        [klass.__init__ for klass in inspect.getmro(target) if "__init__" in vars(klass)]
        if inspect.isclass(target)
        else [target]
    )
    for function in callables:
        try:
            signature = inspect.signature(function)
        except (TypeError, ValueError):
            return names, True
        params = signature.parameters.values()
        names.update(p.name for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and p.name != "self")
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            return names, False
        if not inspect.isclass(target) or not _forwards_kwargs_to_super(function):
            return names, True
    return names, True


def _forwards_kwargs_to_super(function: Any) -> bool:
    """Whether ``function`` passes its ``**kwargs`` on to ``super().__init__`` (not elsewhere)."""
    try:
        source = inspect.getsource(function)
    except (OSError, TypeError):
        return False
    return re.search(r"super\(\)\.__init__\([^)]*\*\*\w+", source) is not None


def check_targets(cfg: Any, path: str = "") -> None:
    """Raise ``ConfigError`` for the first key under ``cfg`` that its ``_target_`` does not accept."""
    if isinstance(cfg, DictConfig | ListConfig) and (cfg._is_none() or cfg._is_missing()):
        return
    if isinstance(cfg, DictConfig):
        target_name = cfg.get("_target_") if "_target_" in cfg else None
        if target_name:
            try:
                target = get_object(str(target_name))
            except Exception as error:  # noqa: BLE001 - hydra wraps import errors in several types
                raise ConfigError(
                    f"{path or 'config'}._target_={target_name} cannot be imported ({error}); fix the name."
                ) from error
            accepted, open_ended = accepted_parameters(target)
            if not open_ended:
                for key in cfg:
                    if key in HYDRA_KEYS or key in accepted:
                        continue
                    close = difflib.get_close_matches(str(key), sorted(accepted), n=1)
                    hint = f"did you mean '{path}.{close[0]}'?" if close else f"valid keys: {', '.join(sorted(accepted))}."
                    raise ConfigError(f"Unknown option '{path}.{key}' for {target_name}; {hint}".replace("'.", "'"))
        for key in cfg:
            child = cfg._get_node(key)
            if isinstance(child, DictConfig | ListConfig):
                check_targets(child, f"{path}.{key}" if path else str(key))
    elif isinstance(cfg, ListConfig):
        for index, item in enumerate(cfg):
            check_targets(item, f"{path}[{index}]")


def check_override_keys(cfg: DictConfig, overrides: Iterable[str]) -> None:
    """Raise ``ConfigError`` for a ``key=value`` override whose key is not in ``cfg``, with a suggestion.

    Overrides that add (``+``), force (``++``) or delete (``~``) keys, and ``hydra.*`` keys, are skipped.
    """
    for override in overrides:
        if override.startswith(("+", "~", "-")) or "=" not in override:
            continue
        key = override.split("=", 1)[0].strip()
        if key.startswith("hydra") or "/" in key or "@" in key:
            continue
        node: Any = cfg
        walked: list[str] = []
        for part in key.split("."):
            if not isinstance(node, DictConfig) or len(node) == 0:
                break  # values and empty mappings ({} in eval.yaml) accept any key
            if part not in list(node.keys()):
                siblings = [str(k) for k in node]
                close = difflib.get_close_matches(part, siblings, n=1)
                where = ".".join(walked) or "the config"
                hint = f"did you mean '{'.'.join([*walked, close[0]])}'?" if close else f"{where} has: {', '.join(siblings)}."
                raise ConfigError(f"Unknown option '{key}'; {hint} (use +{key}=... to add a new key)")
            node = node._get_node(part)
            walked.append(part)


def to_plain(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as plain containers (for results files and checkpoints)."""
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)  # type: ignore[return-value]
