"""Every config option composes, passes the target checks, and instantiates."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import get_class, instantiate
from lightning.pytorch.plugins.io import CheckpointIO
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

import anomaly.config.resolvers  # noqa: F401
from anomaly.conf import CONF_DIR
from anomaly.config.check import ConfigError, check_override_keys, check_targets
from anomaly.config.precheck import group_options, precheck


def compose_train(overrides: list[str]) -> DictConfig:
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=overrides, return_hydra_config=True)


def train_groups() -> list[str]:
    """The config groups a user picks on the train command line (model=, data=, ...), found, not listed."""
    choices = compose_train([]).hydra.runtime.choices
    return sorted(g for g in choices if not g.startswith("hydra") and "/" not in g and "@" not in g
                  and group_options(g))


GROUPS = train_groups()


def resolvable(cfg, tmp_path: Path):
    """Fill the hydra-runtime interpolations the way a real run does."""
    with read_write(cfg), open_dict(cfg):
        cfg.paths.root_dir = str(tmp_path)
        cfg.paths.output_dir = str(tmp_path / "run")
        cfg.hydra.runtime.output_dir = str(tmp_path / "run")
    from hydra.core.hydra_config import HydraConfig

    HydraConfig.instance().set_config(cfg)
    return cfg


@pytest.mark.parametrize(
    ("group", "option"), [(g, o) for g in GROUPS for o in group_options(g)], ids=lambda v: str(v)
)
def test_every_option_composes_and_passes_checks(group: str, option: str, tmp_path: Path) -> None:
    cfg = resolvable(compose_train([f"{group}={option}"]), tmp_path)
    assert cfg.hydra.runtime.choices[group] == option
    check_targets(cfg)
    # Every interpolation resolves (resolvers, ${hydra:...}, cross-group references).
    resolved = {key: OmegaConf.to_container(cfg[key], resolve=True) for key in cfg
                if key != "hydra" and OmegaConf.is_config(cfg[key])}
    assert resolved["model"]["_target_"] and resolved["data"]["_target_"]


def under(path: str | Path, folder: str | Path) -> bool:
    return Path(path).resolve().is_relative_to(Path(folder).resolve())


@pytest.mark.parametrize("option", group_options("trainer"))
def test_trainer_options_instantiate(option: str, tmp_path: Path) -> None:
    cfg = resolvable(compose_train([f"trainer={option}"]), tmp_path)
    node = cfg.trainer
    if node.accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        pytest.skip(f"trainer={option} needs a CUDA device")
    trainer = instantiate(node, logger=False)
    # What the option sets reaches the Trainer as set: hardware, precision, strategy, length, run folder.
    assert trainer.num_devices == node.devices
    assert trainer.precision == str(node.precision)
    if node.accelerator == "cpu":
        assert isinstance(trainer.accelerator, L.pytorch.accelerators.CPUAccelerator)
    if OmegaConf.is_dict(node.get("strategy")):
        assert isinstance(trainer.strategy, get_class(node.strategy._target_))
    for plugin in node.get("plugins") or []:
        if issubclass(get_class(plugin._target_), CheckpointIO):
            assert isinstance(trainer.strategy.checkpoint_io, get_class(plugin._target_))
    assert (trainer.max_epochs, trainer.max_steps) == (node.max_epochs, node.max_steps)
    assert under(trainer.default_root_dir, tmp_path / "run")


@pytest.mark.parametrize("option", group_options("logger"))
def test_logger_options_instantiate(option: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = resolvable(compose_train([f"logger={option}"]), tmp_path)
    loggers = [instantiate(node) for node in cfg.logger.values()]
    assert all(isinstance(logger, L.pytorch.loggers.Logger) for logger in loggers)
    assert bool(loggers) == (option != "none")
    run = tmp_path / "run"
    for logger in loggers:
        assert under(logger.save_dir, run)  # a run's logs live in its folder
        if isinstance(logger, L.pytorch.loggers.WandbLogger):
            continue  # starting a W&B run (a service process) is too slow for this test
        logger.log_metrics({"val/mean/image_auroc": 0.5}, step=0)
        logger.finalize("success")
        assert any(p.is_file() and under(p, logger.save_dir) for p in run.rglob("*")), option


@pytest.mark.parametrize("option", group_options("callbacks"))
def test_callback_options_instantiate(option: str, tmp_path: Path) -> None:
    cfg = resolvable(compose_train([f"callbacks={option}"]), tmp_path)
    callbacks = [instantiate(node) for node in cfg.callbacks.values()]
    assert bool(callbacks) == (option != "none")
    assert all(isinstance(callback, L.Callback) for callback in callbacks)
    for callback in callbacks:
        # Files go to the run's folder; checkpoints and early stopping follow the validation metric.
        if getattr(callback, "dirpath", None) is not None:
            assert under(callback.dirpath, tmp_path / "run"), callback
        if getattr(callback, "monitor", None) is not None:
            assert callback.monitor == cfg.monitor and not callback.monitor.startswith("test"), callback
    trainer = L.Trainer(callbacks=callbacks, logger=False, accelerator="cpu", devices=1,
                        enable_progress_bar=False, default_root_dir=tmp_path)
    assert all(callback in trainer.callbacks for callback in callbacks)


@pytest.mark.parametrize("option", group_options("data"))
def test_data_options_instantiate(option: str, tmp_path: Path) -> None:
    cfg = resolvable(compose_train([f"data={option}", f"data.root={tmp_path}"]), tmp_path)
    datamodule = instantiate(cfg.data)
    assert datamodule.root == tmp_path
    assert isinstance(datamodule.layout, get_class(cfg.data.layout._target_))
    assert datamodule.setting == cfg.data.setting and datamodule.category == cfg.data.category
    assert (datamodule.image_size, datamodule.crop_size) == (cfg.data.image_size, cfg.data.crop_size)


def test_padim_model_instantiates(tmp_path: Path) -> None:
    cfg = resolvable(compose_train(["model=padim", "model.backbone.weights=none"]), tmp_path)
    model = instantiate(cfg.model)
    assert model.model.grid == (56, 56)


def test_typo_in_yaml_key_is_caught_with_suggestion(tmp_path: Path) -> None:
    cfg = resolvable(compose_train([]), tmp_path)
    with open_dict(cfg):
        cfg.model.backbone.nmae = "resnet18"
    with pytest.raises(ConfigError, match=r"model\.backbone\.nmae.*did you mean 'model\.backbone\.name'"):
        check_targets(cfg)


def test_typo_on_command_line_is_caught_with_suggestion() -> None:
    with pytest.raises(ConfigError, match=r"did you mean 'model\.backbone\.name'"):
        precheck("train", ["model.backbone.nmae=resnet18"])
    with pytest.raises(ConfigError, match=r"did you mean model=padim"):
        precheck("train", ["model=padm"])
    with pytest.raises(ConfigError, match=r"did you mean 'data\.batch_size'"):
        precheck("train", ["data=mvtec", "data.batch_sise=3"])


def test_valid_overrides_pass_the_precheck() -> None:
    precheck("train", ["-m", "model=padim", "data=mvtec,visa", "data.category=bottle,screw", "+extra.key=1",
                       "hydra.verbose=true", "trainer.max_epochs=2"])
    precheck("eval", ["ckpt_path=x.ckpt", "data.root=/elsewhere"])


def test_check_override_keys_reports_siblings_when_nothing_is_close(tmp_path: Path) -> None:
    cfg = resolvable(compose_train([]), tmp_path)
    with pytest.raises(ConfigError, match="has:"):
        check_override_keys(cfg, ["model.zzzzzz=1"])
