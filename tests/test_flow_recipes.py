"""The DifferNet and dense-flow recipes as the paper presets compose them (marco-rudolph/differnet's config.py,
train.py, utils.py; the dense flow paper), built into the model and its optimizer: each value pinned."""

from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from anomaly.models.flow import FlowDetector
from anomaly.nn.flows import AffineCoupling, DenseCoupling

pytestmark = pytest.mark.one_thread


def preset(name: str, *overrides: str) -> OmegaConf:
    GlobalHydra.instance().clear()
    with initialize_config_module("anomaly.conf", version_base="1.3"):
        return compose("train", overrides=[f"experiment={name}", "model.backbone.weights=none", *overrides])


def built(name: str) -> tuple[OmegaConf, FlowDetector, torch.optim.Adam]:
    cfg = preset(name)
    options = {k: v for k, v in OmegaConf.to_container(cfg.model, resolve=True).items()
               if k not in ("_target_", "_recursive_")}
    with torch.device("meta"):  # paper widths without allocating them
        model = FlowDetector(**options)
    return cfg, model, model.configure_optimizers()


def widths(subnet: torch.nn.Module) -> list[int]:
    return [layer.out_features for layer in subnet if isinstance(layer, torch.nn.Linear)]


def check_differnet_like(cfg: OmegaConf, model: FlowDetector, optimizer: torch.optim.Adam) -> None:
    """What both presets share with DifferNet's code."""
    group = optimizer.param_groups[0]
    assert (group["lr"], group["betas"], group["eps"], group["weight_decay"]) == (2e-4, (0.8, 0.8), 1e-4, 1e-5)
    assert cfg.data.batch_size * model.train_views == 96  # 24 images × 4 rotations a step
    assert (cfg.data.image_size, cfg.data.crop_size, model.model.scales) == (448, None, [448, 224, 112])
    assert model.rotation == 180.0 and model.model.rotation_fill == "black" and model.model.scale_mode == "nearest"
    assert model.model.flow.dim == 768 and cfg.model.backbone.name == "torchvision:alexnet"
    assert cfg.model.cells == 1 and cfg.model.position_dim == 0 and cfg.model.lr_schedule == "constant"


def test_the_differnet_preset_is_differnet_s_recipe() -> None:
    cfg, model, optimizer = built("differnet_mvtec")
    check_differnet_like(cfg, model, optimizer)
    couplings = [b for b in model.model.flow.blocks if isinstance(b, AffineCoupling)]
    assert len(couplings) == 8 and all(c.clamp == 3.0 for c in couplings)
    assert widths(couplings[0].net1) == [2048, 2048, 2048, 2 * 384]  # FC 384 → 2048³ → s and t of 384
    assert cfg.trainer.max_epochs == 24 * 8 and cfg.data.batch_size == 24 and model.train_views == 4
    assert model.model.n_views == 64 and model.hparams.view_brightness == 0.0  # rotations only
    assert model.model.score == "z2"  # train.py: torch.mean(z_grouped ** 2)


def test_the_dense_flow_preset_is_the_paper_s_recipe() -> None:
    cfg, model, optimizer = built("cdflow_mvtec")
    check_differnet_like(cfg, model, optimizer)
    couplings = [b for b in model.model.flow.blocks if isinstance(b, DenseCoupling)]
    assert len(couplings) == 3 and all(c.clamp == 2.0 and c.depth == 3 for c in couplings)
    assert widths(couplings[0].net) == [768, 768, 2 * 384]
    assert cfg.trainer.max_epochs == 280 and model.model.n_views == 48
    assert model.model.score == "neg_log_pz"  # −log p_Z(z)
    assert (cfg.data.few_shot_mode, cfg.data.few_shot_anomalies) == ("defect_types", 1)  # 1–2 known defect types


def test_the_pre_training_reads_what_the_flow_reads_and_holds_out_the_same_images() -> None:
    flow, pre = preset("cdflow_mvtec"), preset("contrastive_mvtec")
    assert pre.model._target_ == "anomaly.models.contrastive.ContrastiveBackbone"
    for key in ("image_size", "crop_size", "few_shot_anomalies", "few_shot_seed", "few_shot_mode", "layout"):
        assert pre.data[key] == flow.data[key], key
    assert pre.model.backbone == flow.model.backbone
    assert list(pre.synthesis.skip_categories) == ["carpet", "tile"]


@pytest.mark.parametrize("name", ["differnet_cpu", "cdflow_cpu"])
def test_the_cpu_presets_keep_the_settings_they_were_measured_with(name: str) -> None:
    cfg = preset(name)
    assert (cfg.model.score, cfg.model.scale_mode, cfg.model.rotation_fill) == ("nll", "bilinear", "mean")
