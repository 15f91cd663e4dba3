"""Quiet, informative runs: Lightning's banners off, one header line per run."""

from __future__ import annotations

import logging
import warnings
from importlib import resources
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

# Lightning's per-Trainer banner ("GPU available", "TPU available", tips) and hints that are settled
# by our configs (worker counts are a data option; the metrics we log are identical on every rank).
_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
            "lightning.pytorch.accelerators.cuda", "lightning.fabric.utilities.seed")
_HINTS = (r".*does not have many workers.*", r".*litlogger.*", r".*LitLogger.*",
          r".*The number of training batches \(\d+\) is smaller than the logging interval.*",
          r".*configure_optimizers` returned `None`.*",  # statistics methods (PaDiM) have no optimizer
          r".*Total length of `list` across ranks is zero.*",  # data.val=none: the empty validation loader
          r".*module\(s\) in eval mode at the start of training.*",  # frozen backbones stay in eval mode
          r".*isinstance\(treespec, LeafSpec\)` is deprecated.*")


def quiet_lightning() -> None:
    """Silence Lightning's per-Trainer banner lines and tips (warnings about real problems stay)."""
    for name in _LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    for pattern in _HINTS:
        warnings.filterwarnings("ignore", message=pattern)


def recipe(cfg: DictConfig) -> dict[str, Any]:
    """What the chosen model's YAML sets outside ``model`` (its data/trainer recipe), with the values
    the run actually uses (a data set's YAML may have changed them); keys the command line sets are left
    out, the user knows those."""
    try:
        from hydra.core.hydra_config import HydraConfig

        hydra = HydraConfig.get()
        choice = hydra.runtime.choices.get("model")
        sources = [(s.schema, s.path) for s in hydra.runtime.config_sources]
        typed = {o.split("=", 1)[0].lstrip("+~") for o in hydra.overrides.task}
    except ValueError:  # not under Hydra (tests that compose by hand)
        return {}
    text = None
    for schema, path in sources:
        if schema == "pkg":
            candidate = resources.files(path.replace("/", ".")) / "model" / f"{choice}.yaml"
        elif schema == "file":
            candidate = Path(path) / "model" / f"{choice}.yaml"
        else:
            continue
        if candidate.is_file():
            text = candidate.read_text()
    if text is None:
        return {}
    own = OmegaConf.create(text)
    keys: dict[str, Any] = {}
    for group in own:
        if group in ("model", "defaults"):
            continue
        for key in _leaves(own[group], str(group)):
            if not any(key == t or key.startswith(f"{t}.") for t in typed):
                keys[key] = OmegaConf.select(cfg, key)
    return keys


def _leaves(node: Any, prefix: str) -> list[str]:
    if isinstance(node, DictConfig):
        return [leaf for k in node for leaf in _leaves(node._get_node(k), f"{prefix}.{k}")]
    return [prefix]


def header(cfg: DictConfig, setting: str, categories: list[str], output_dir: Path) -> None:
    """One line naming the run, plus the model's recipe when it sets data/trainer values."""
    method = str(cfg.model._target_).rsplit(".", 1)[-1]
    choice = _choice("data")  # evaluate composes no data group: its data come from the checkpoint's run
    root = OmegaConf.select(cfg, "data.root", default=None)
    data = f"data={choice}" if choice else f"data.root={root}" if root is not None else "data of the run"
    shown = ", ".join(categories[:6]) + (f", … ({len(categories)})" if len(categories) > 6 else "")
    print(f"{method} · {data} · {setting} · {shown} → {output_dir}", flush=True)
    values = recipe(cfg)
    if values:
        print(f"  model={_choice('model')} recipe: " + ", ".join(f"{k}={v}" for k, v in values.items()), flush=True)


def _choice(group: str) -> str | None:
    try:
        from hydra.core.hydra_config import HydraConfig

        return HydraConfig.get().runtime.choices.get(group)
    except ValueError:
        return None
