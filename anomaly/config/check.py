"""Fail in a second, not after an hour: config keys checked against what they configure.

Every node with a ``_target_`` is checked against its callable's signature (following ``**kwargs``
to the base classes' constructors); a key nobody accepts is an error that suggests the closest name.
Command-line overrides of keys that do not exist get the same treatment before Hydra composes, and the
common numeric options (batch sizes, workers, epochs, sizes, fractions) are checked against what they
take (``VALUES``), on the command line and in the composed config.
"""

from __future__ import annotations

import difflib
import inspect
import re
from collections.abc import Callable, Iterable
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


def _whole(low: int, none: bool = False) -> Callable[[Any], bool]:
    """A whole number ``>= low`` (``None`` too when ``none``); ``true``/``false`` are not numbers."""
    return lambda v: (none and v is None) or (isinstance(v, int) and not isinstance(v, bool) and v >= low)


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _size(none: bool = False) -> Callable[[Any], bool]:
    """A side of 1 or more, or ``[height, width]`` of such (``None`` too when ``none``)."""
    side = _whole(1)
    return lambda v: (none and v is None) or side(v) or (
        isinstance(v, list | tuple | ListConfig) and len(v) == 2 and all(side(x) for x in v))


def _limit(v: Any) -> bool:
    """Lightning's ``limit_*_batches``: a fraction of the batches in [0, 1] or a whole number of batches."""
    return _whole(0)(v) or (_number(v) and 0.0 <= v <= 1.0)


_SIDE = "a whole number of 1 or more, or [height, width]"
#: Common options and what they take: key -> (accepts, what it takes, an example value). Lightning takes -1
#: for "no limit" in max_epochs/max_steps (and for "all" in num_sanity_val_steps).
VALUES: dict[str, tuple[Callable[[Any], bool], str, str]] = {
    "data.batch_size": (_whole(1), "a whole number of 1 or more", "32"),
    "data.eval_batch_size": (_whole(1), "a whole number of 1 or more", "32"),
    "data.num_workers": (_whole(0), "a whole number of 0 or more (0: load in the main process)", "2"),
    "data.image_size": (_size(), _SIDE, "256"),
    "data.crop_size": (_size(none=True), f"null (no crop) or {_SIDE}", "224"),
    "data.val_fraction": (lambda v: _number(v) and 0.0 < v < 1.0, "a number strictly between 0 and 1", "0.2"),
    "data.few_shot_anomalies": (_whole(0), "a whole number of 0 or more", "0"),
    "trainer.max_epochs": (_whole(-1, none=True), "a whole number of 0 or more, or -1 for no limit", "10"),
    "trainer.max_steps": (_whole(-1), "a whole number of 0 or more, or -1 for no limit", "1000"),
    "trainer.min_epochs": (_whole(0, none=True), "null or a whole number of 0 or more", "1"),
    "trainer.accumulate_grad_batches": (_whole(1), "a whole number of 1 or more", "1"),
    "trainer.check_val_every_n_epoch": (_whole(1, none=True), "null or a whole number of 1 or more", "1"),
    "trainer.num_sanity_val_steps": (_whole(-1), "a whole number of 0 or more, or -1 for all", "0"),
    "trainer.limit_train_batches": (_limit, "a fraction in [0, 1] or a whole number of batches", "1.0"),
    "trainer.limit_val_batches": (_limit, "a fraction in [0, 1] or a whole number of batches", "1.0"),
    "trainer.limit_test_batches": (_limit, "a fraction in [0, 1] or a whole number of batches", "1.0"),
    "seed": (_whole(0), "a whole number of 0 or more", "42"),
    "batch_size": (_whole(1), "a whole number of 1 or more", "8"),  # predict's
    "threads": (_whole(1, none=True), "null or a whole number of 1 or more", "4"),  # predict's
    "heatmaps": (_whole(0), "a whole number of 0 or more", "8"),  # evaluate's
}


def check_value(key: str, value: Any) -> None:
    """Raise ``ConfigError`` when ``key`` is one of ``VALUES`` and ``value`` is not what it takes."""
    if key not in VALUES:
        return
    accepts, what, example = VALUES[key]
    if not accepts(value):
        shown = "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
        raise ConfigError(f"{key}={shown} is not valid: {key} takes {what}; e.g. {key}={example}.")


def check_values(cfg: DictConfig) -> None:
    """``check_value`` for every key of ``VALUES`` that ``cfg`` holds (values that do not resolve are skipped)."""
    for key in VALUES:
        try:
            value = OmegaConf.select(cfg, key, throw_on_missing=True)
        except Exception:  # noqa: BLE001 - an interpolation only Hydra's runtime resolves, or ???
            continue
        if value is not None or OmegaConf.select(cfg, key, default="absent") != "absent":
            check_value(key, OmegaConf.to_object(value) if isinstance(value, ListConfig) else value)


def check_targets(cfg: Any, path: str = "") -> None:
    """Raise ``ConfigError`` for the first key under ``cfg`` that its ``_target_`` does not accept (at the
    root, first the common option values: ``check_values``)."""
    if not path and isinstance(cfg, DictConfig):
        check_values(cfg)
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
