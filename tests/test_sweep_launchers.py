"""Launchers: the SLURM and joblib configs compose and build (no cluster here), a missing plugin is named,
and DDP ranks under Hydra re-run their own job into its folder."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import OmegaConf

from anomaly.config.check import ConfigError


def composed(overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_module("anomaly.conf", version_base="1.3"):
        return compose("train", overrides=overrides, return_hydra_config=True)


def test_slurm_launcher_composes_builds_and_writes_the_sbatch_options(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from submitit.slurm.slurm import SlurmExecutor, _make_sbatch_string

    monkeypatch.setattr(SlurmExecutor, "affinity", classmethod(lambda cls: 1))  # pretend srun exists (no cluster)

    cfg = composed(["hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.timeout_min=600",
                    "trainer=ddp", "trainer.devices=4", "+trainer.num_nodes=2", f"hydra.sweep.dir={tmp_path}"])
    params = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert (params["nodes"], params["tasks_per_node"], params["gpus_per_node"]) == (2, 4, 4)
    launcher = instantiate(cfg.hydra.launcher)
    # (Hydra's plugin discovery imports plugin modules on its own: compare the class by name.)
    assert f"{type(launcher).__module__}.{type(launcher).__name__}" == cfg.hydra.launcher._target_
    assert cfg.hydra.launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    # What the launcher hands submitit (as SlurmLauncher.launch does), turned into the sbatch header.
    executor = submitit.AutoExecutor(cluster="slurm", folder=str(tmp_path / ".submitit"))
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in launcher.params.items()
                                  if k not in ("submitit_folder", "max_num_timeout")})
    sbatch = _make_sbatch_string(command="python -m anomaly.train", folder=str(tmp_path),
                                 **executor._executor.parameters)
    for line in ("--partition=gpu", "--nodes=2", "--ntasks-per-node=4", "--gpus-per-node=4", "--time=600"):
        assert f"#SBATCH {line}" in sbatch, line


def test_joblib_launcher_composes_and_builds() -> None:
    cfg = composed(["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"])
    launcher = instantiate(cfg.hydra.launcher)
    assert type(launcher).__name__ == "JoblibLauncher" and launcher.joblib["n_jobs"] == 2


def test_a_launcher_whose_plugin_is_missing_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    from anomaly.config import precheck

    monkeypatch.setitem(precheck.PLUGINS, ("hydra/launcher", "joblib"),
                        ("hydra_plugins.not_installed_here", "hydra-joblib-launcher"))
    with pytest.raises(ConfigError, match=r"^hydra/launcher=joblib needs the Hydra plugin package "
                                          r"hydra-joblib-launcher, which is not installed; pip install"):
        precheck.precheck("train", ["-m", "hydra/launcher=joblib", "seed=1,2"])
    precheck.precheck("train", ["-m", "hydra/launcher=slurm", "hparams_search=padim_optuna"])  # installed: passes


def test_ddp_ranks_of_a_sweep_job_rerun_that_job_into_its_folder(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from anomaly.callbacks.ddp_strategy import job_command

    # as `python -m anomaly.train` runs it (a pytest-xdist worker's __main__ has no module spec)
    monkeypatch.setattr(sys.modules["__main__"], "__spec__", SimpleNamespace(name="anomaly.train"), raising=False)

    hydra = OmegaConf.create({
        "overrides": {"task": ["model.n_features=16", "seed=2", "hparams_search=padim_optuna"],
                      "hydra": [f"hydra.sweep.dir={tmp_path}", "hydra.searchpath=[file:///my/conf]"]},
        "runtime": {"output_dir": str(tmp_path / "3_padim_synthetic")},
    })
    argv = ["anomaly/train.py", "-m", "--config-dir", "/my/conf", "model.n_features=8,16", "seed=1,2"]
    command = job_command(hydra, argv, local_rank=1)
    assert command[:3] == [sys.executable, "-m", "anomaly.train"]
    # [python, -m, <entry module>] then: the config flags, this job's overrides (not the sweep), its folder.
    assert command[3:] == ["--config-dir", "/my/conf", "model.n_features=16", "seed=2", "hparams_search=padim_optuna",
                           "hydra.searchpath=[file:///my/conf]", f'hydra.run.dir="{tmp_path / "3_padim_synthetic"}"',
                           "hydra.job.name=train_ddp_process_1", "hydra.output_subdir=null", "hydra.mode=RUN"]


PRESETS = sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "anomaly/conf/hparams_search").glob("*.yaml"))


@pytest.mark.parametrize("preset", PRESETS)
def test_every_optuna_preset_searches_existing_keys_on_a_validation_metric(preset: str, tmp_path: Path) -> None:
    from hydra.core.hydra_config import HydraConfig

    method = preset.removesuffix("_optuna")
    assert method in {"padim", "diad", "differnet", "cdflow", "realnet"}
    cfg = composed([f"experiment={method}_cpu", f"hparams_search={preset}", f"hydra.sweep.dir={tmp_path / 'sweep'}"])
    HydraConfig.instance().set_config(cfg)
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_ == "hydra_plugins.anomaly_sweeper.sweeper.ResumableOptunaSweeper"
    assert sweeper.storage == f"sqlite:///{(tmp_path / 'sweep').resolve() / 'optuna.db'}" and sweeper.study_name == method
    assert cfg.hydra.mode.name == "MULTIRUN" and cfg.optimized_metric.startswith("val/") and cfg.data.val != "none"
    assert len(sweeper.params) >= 3
    for key in sweeper.params:  # a swept key the model does not have would only fail at the first trial
        assert OmegaConf.select(cfg, key, default="<absent>") != "<absent>", f"{preset} sweeps {key}, not in the config"
