"""Every config option composes, passes the target checks, and instantiates."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict, read_write

import anomaly.config.resolvers  # noqa: F401
from anomaly.config.check import ConfigError, check_override_keys, check_targets
from anomaly.config.precheck import CONF_DIR, group_options, precheck

GROUPS = ["model", "data", "synthesis", "trainer", "logger", "callbacks", "experiment", "hparams_search"]


def compose_train(overrides: list[str]) -> OmegaConf:
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=overrides, return_hydra_config=True)


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
    check_targets(cfg)
    resolved = {key: OmegaConf.to_container(cfg[key], resolve=True) for key in cfg
                if key != "hydra" and OmegaConf.is_config(cfg[key])}
    assert resolved["model"]["_target_"] and resolved["data"]["_target_"]


@pytest.mark.parametrize("option", [o for o in group_options("trainer")])
def test_trainer_options_instantiate(option: str, tmp_path: Path) -> None:
    cfg = resolvable(compose_train([f"trainer={option}", "trainer.accelerator=cpu"]), tmp_path)
    with open_dict(cfg):
        cfg.trainer.strategy = "auto"
        cfg.trainer.devices = 1
        cfg.trainer.precision = "32-true"
    trainer = instantiate(cfg.trainer, logger=False)
    assert trainer.max_epochs == cfg.trainer.max_epochs


@pytest.mark.parametrize("option", [o for o in group_options("logger") if o != "none"])
def test_logger_options_instantiate(option: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = resolvable(compose_train([f"logger={option}"]), tmp_path)
    loggers = [instantiate(node) for node in cfg.logger.values()]
    assert loggers and all(hasattr(logger, "log_metrics") for logger in loggers)


@pytest.mark.parametrize("option", group_options("callbacks"))
def test_callback_options_instantiate(option: str, tmp_path: Path) -> None:
    cfg = resolvable(compose_train([f"callbacks={option}"]), tmp_path)
    callbacks = [instantiate(node) for node in cfg.callbacks.values()]
    assert all(hasattr(callback, "on_test_batch_end") for callback in callbacks)


@pytest.mark.parametrize("option", group_options("data"))
def test_data_options_instantiate(option: str, tmp_path: Path) -> None:
    cfg = resolvable(compose_train([f"data={option}", f"data.root={tmp_path}"]), tmp_path)
    datamodule = instantiate(cfg.data)
    assert datamodule.setting in ("separate", "unified")


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
