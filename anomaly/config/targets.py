"""The allow-list of code a file may name: ``_target_``s and classes read from checkpoints, exported
models' JSON and run folders are data, and are checked here before anything they name is imported.

Allowed: (a) every ``_target_`` of the shipped configs (``anomaly/conf``: the library classes they use
included); (b) a class of the ``anomaly`` package that is a ``torch.nn.Module`` (methods, backbones,
latents), a ``LightningDataModule`` or a synthesis strategy (never a function); (c) names the user
trusts: ``ANOMALY_TRUSTED_TARGETS`` (comma-separated names, or module prefixes ending in ``.``) or the
caller's ``trusted`` (the model the command line itself names). A string holding an interpolation
(``${...}``) is refused too: a stored config is resolved, and a resolver could build a node at load time.
"""

from __future__ import annotations

import functools
import importlib
import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

import yaml

from anomaly.conf import CONF_DIR

TRUST_ENV = "ANOMALY_TRUSTED_TARGETS"
# Bases (by qualified name: nothing is imported to compare) a class of ours must derive from.
BASES = frozenset({
    "torch.nn.modules.module.Module",
    "lightning.pytorch.core.datamodule.LightningDataModule",
    "anomaly.synthesis.base.SynthesisStrategy",
})
_DOTTED = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+")
_RULE = ("the _target_s of the shipped configs and the anomaly package's own model, data and synthesis "
         f"classes; if you trust the file, add the name to {TRUST_ENV}")


class TargetError(ValueError):
    """A file names code (a ``_target_``, a method class) that is not on the allow-list."""


@functools.cache
def shipped_targets() -> frozenset[str]:
    """Every ``_target_`` in the config YAMLs shipped in ``anomaly/conf`` (read once)."""
    found: set[str] = set()
    for path in sorted(CONF_DIR.rglob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            found.update(str(v) for _, v in _targets(document, ""))
    return frozenset(found)


def _targets(node: Any, path: str) -> Iterable[tuple[str, Any]]:
    """``(key path, value)`` of every ``_target_`` under ``node`` (mappings and lists, at any depth)."""
    if isinstance(node, Mapping):
        for key, value in node.items():
            child = f"{path}.{key}" if path else str(key)
            if key == "_target_":
                yield child, value
            else:
                yield from _targets(value, child)
    elif isinstance(node, list | tuple):
        for index, value in enumerate(node):
            yield from _targets(value, f"{path}[{index}]")


def _trusted_by_user(name: str) -> bool:
    entries = [e.strip() for e in os.environ.get(TRUST_ENV, "").split(",") if e.strip()]
    return any(name == e or (e.endswith(".") and name.startswith(e)) for e in entries)


@functools.cache
def _own_class(name: str) -> bool:
    """Whether ``name`` is a class of the ``anomaly`` package deriving from one of ``BASES``; only
    ``anomaly.*`` modules are imported to find out."""
    if not name.startswith("anomaly.") or not _DOTTED.fullmatch(name) or "__" in name:
        return False
    parts = name.split(".")
    for split in range(len(parts) - 1, 0, -1):
        module_name = ".".join(parts[:split])
        try:
            found: Any = importlib.import_module(module_name)
        except ImportError:
            continue
        for attribute in parts[split:]:
            found = getattr(found, attribute, None)
        break
    else:
        return False
    return (isinstance(found, type) and found.__module__.startswith("anomaly.")
            and any(f"{base.__module__}.{base.__qualname__}" in BASES for base in found.__mro__))


def is_allowed(name: Any, trusted: Iterable[str] = ()) -> bool:
    """Whether a file may name ``name`` (checked on the string before importing anything outside ``anomaly``)."""
    if not isinstance(name, str):
        return False
    return name in shipped_targets() or name in set(trusted) or _trusted_by_user(name) or _own_class(name)


def check_class(name: Any, source: str, key: str, trusted: Iterable[str] = ()) -> str:
    """``name`` if a file (``source``, e.g. ``ckpt_path=<file>``) may name it at ``key``, else ``TargetError``."""
    if not is_allowed(name, trusted):
        raise TargetError(f"{source} names {name!r} at {key}, which is not on the allow-list of code a file may "
                          f"name ({_RULE}); refused, nothing was built or written.")
    return str(name)


def check_data(data: Any, source: str, trusted: Iterable[str] = ()) -> None:
    """Refuse data read from ``source`` that names code off the allow-list: any ``_target_`` at any
    depth (``_args_`` and ``_partial_`` nodes included) or an interpolation (``${...}``) in any string."""
    trusted = tuple(trusted)
    for key, name in _targets(data, ""):
        check_class(name, source, key, trusted)
    key = _interpolation(data, "")
    if key is not None:
        raise TargetError(f"{source} holds an interpolation (${{...}}) at {key}, which a stored config never "
                          "holds and which could name code when resolved; refused, nothing was built or written.")


def _interpolation(node: Any, path: str) -> str | None:
    """The key path of the first string under ``node`` holding ``${``, else ``None``."""
    if isinstance(node, str):
        return (path or "<top>") if "${" in node else None
    items = node.items() if isinstance(node, Mapping) else enumerate(node) if isinstance(node, list | tuple) else ()
    for key, value in items:
        found = _interpolation(value, f"{path}[{key}]" if isinstance(key, int) else f"{path}.{key}" if path else str(key))
        if found is not None:
            return found
    return None
