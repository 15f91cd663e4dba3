"""The flow's extractors and data: torchvision backbones (the paper's AlexNet), method checkpoints as
weights, locality-preserving cells, MTD with DifferNet's training list."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from anomaly.data.datamodule import AnomalyDataModule
from anomaly.data.errors import DataError
from anomaly.data.layouts import MTDLayout
from anomaly.models.flow import FlowDetector
from anomaly.nn.backbone import BackboneError, FeatureExtractor
from anomaly.nn.flows import FlowInputError
from tests.test_layouts import make_mtd

pytestmark = pytest.mark.one_thread

ALEXNET = {"_target_": "anomaly.nn.backbone.FeatureExtractor", "name": "torchvision:alexnet",
           "layers": ["features.12"], "weights": "none"}
LITE = {"_target_": "anomaly.nn.backbone.FeatureExtractor", "name": "efficientnet_lite0",
        "layers": ["blocks.2"], "weights": "none"}


def tiny(backbone: dict, scales: list[int], **options) -> FlowDetector:
    torch.manual_seed(0)
    return FlowDetector(backbone, kind="dense", n_blocks=1, hidden=[16], depth=1, scales=scales, n_views=1,
                        train_views=1, rotation=0.0, **options)


def test_a_torchvision_alexnet_feeds_the_flow_with_its_256_pooled_channels() -> None:
    fx = FeatureExtractor("torchvision:alexnet", ["features.12", "features.9"], weights="none")
    assert fx.channels == {"features.12": 256, "features.9": 256}
    assert not any(p.requires_grad for p in fx.parameters())
    maps = fx(torch.zeros(2, 3, 128, 128))
    assert maps["features.12"].shape == (2, 256, 3, 3)
    model = tiny(ALEXNET, [128, 96]).eval()
    assert model.model.flow.dim == 2 * 256  # the paper: 3 scales × 256 = 768
    anomaly_map, score = model(torch.randn(2, 3, 128, 128) * 0.3)
    assert anomaly_map.shape == (2, 1, 128, 128) and score.shape == (2,) and bool(torch.isfinite(score).all())
    assert float(anomaly_map.abs().sum()) > 0  # the input gradient reaches through torchvision's graph


def test_torchvision_backbone_options_fail_with_one_sentence() -> None:
    with pytest.raises(BackboneError, match=r"torchvision:alexnt is not a torchvision.*torchvision:alexnet"):
        FeatureExtractor("torchvision:alexnt", ["features.12"], "none")
    with pytest.raises(BackboneError, match=r"\['features.99'\].*choose from its nodes"):
        FeatureExtractor("torchvision:alexnet", ["features.99"], "none")
    with pytest.raises(BackboneError, match=r"weights=offline is only available for \['efficientnet_lite0'\]"):
        FeatureExtractor("torchvision:alexnet", ["features.12"], "offline")


def test_a_method_checkpoint_loads_as_backbone_weights(tmp_path: Path) -> None:
    source = FeatureExtractor("efficientnet_lite0", ["blocks.2"], "none")
    torch.manual_seed(3)
    state = {f"model.backbone.model.{k}": v + torch.randn_like(v) if v.is_floating_point() else v
             for k, v in source.model.state_dict().items()}
    torch.save({"state_dict": {**state, "model.head.0.weight": torch.zeros(2, 2)}}, tmp_path / "method.ckpt")
    loaded = FeatureExtractor("efficientnet_lite0", ["blocks.2"], str(tmp_path / "method.ckpt"))
    assert all(torch.equal(v, state[f"model.backbone.model.{k}"]) for k, v in loaded.model.state_dict().items())
    with pytest.raises(BackboneError, match="does not fit 'efficientnet_lite0'"):
        FeatureExtractor("efficientnet_lite0", ["blocks.4"], str(tmp_path / "method.ckpt"))


def test_cells_score_an_image_by_its_worst_cell() -> None:
    model = tiny(LITE, [64], cells=2).eval()
    image = torch.randn(3, 3, 64, 64) * 0.3
    features = model.model.embed(image)
    assert features.shape == (3, 4, model.model.flow.dim)
    per_cell = model.model.flow.nll(features.reshape(12, -1)).view(3, 4)
    assert torch.allclose(model.model.nll(image), per_cell.amax(1))
    anomaly_map, score = model(image)
    assert torch.allclose(score, per_cell.amax(1), atol=1e-5) and anomaly_map.shape == (3, 1, 64, 64)
    global_pool = tiny(LITE, [64], cells=1)
    assert global_pool.model.embed(image).shape == (3, global_pool.model.flow.dim)
    with pytest.raises(FlowInputError, match="model.cells=0"):
        tiny(LITE, [64], cells=0)


def test_mtd_with_differnet_s_training_list_feeds_a_flow(tmp_path: Path) -> None:
    root = make_mtd(tmp_path / "mtd", n_free=10)
    free = sorted(p.name for p in (root / "MT_Free" / "Imgs").glob("*.jpg"))
    (tmp_path / "mtd_train_filenames.txt").write_text("\n".join(free[:7]) + "\n")
    layout = MTDLayout(train_list=tmp_path / "mtd_train_filenames.txt")
    assert [name for name, split in layout.split_listing(root) if split == "train"] == [f"MT_Free/Imgs/{n}" for n in free[:7]]
    dm = AnomalyDataModule(root, layout, image_size=64, val="none", batch_size=8, eval_batch_size=64)
    assert len(dm.dataset("train")) == 7 and sum(r.label == 0 for r in dm.records("test")) == 3
    model = tiny(LITE, [64])
    loss = model.training_step(next(iter(DataLoader(dm.dataset("train"), batch_size=8))), 0)
    assert torch.isfinite(loss)
    batch = next(iter(DataLoader(dm.dataset("test"), batch_size=64)))
    anomaly_map, score = model.eval()(batch["image"])
    assert anomaly_map.shape[0] == score.shape[0] == len(dm.records("test"))
    (tmp_path / "bad.txt").write_text("exp9_num_1.jpg\n")
    with pytest.raises(DataError, match=r"names 1 image\(s\) not in .*MT_Free/Imgs \(e.g. exp9_num_1.jpg\)"):
        MTDLayout(train_list=tmp_path / "bad.txt").records(root, "magnetic_tile", "train")
    with pytest.raises(DataError, match="train_list=.*missing.txt is not a file"):
        MTDLayout(train_list=tmp_path / "missing.txt").records(root, "magnetic_tile", "train")


@pytest.mark.parametrize("experiment", ["cdflow_mvtec", "differnet_mvtec"])
def test_paper_presets_read_768_alexnet_features(experiment: str) -> None:
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from anomaly.nn.flows.detector import FlowDensityModel

    GlobalHydra.instance().clear()
    with initialize_config_module("anomaly.conf", version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment={experiment}", "model.backbone.weights=none"])
    assert cfg.model.backbone.name == "torchvision:alexnet" and cfg.model.cells == 1
    fx = FeatureExtractor(cfg.model.backbone.name, list(cfg.model.backbone.layers), cfg.model.backbone.weights)
    assert FlowDensityModel.feature_dim(fx.channels.values(), cfg.model.scales) == 768  # the paper's 3 × 256


def test_position_condition_gives_every_cell_its_own_code() -> None:
    """``model.position_dim``: each cell's row-major position code conditions the flow, so the same
    feature vector scores differently in two cells; the image's score is still its worst cell."""
    from anomaly.nn.flows.position import position_encoding

    model = tiny(LITE, [64], cells=2, position_dim=8).eval()
    image = torch.randn(3, 3, 64, 64) * 0.3
    features = model.model.embed(image)
    cond = position_encoding(2, 8).repeat(3, 1)
    per_cell = model.model.flow.nll(features.reshape(12, -1), cond).view(3, 4)
    assert torch.allclose(model.model.nll(image), per_cell.amax(1))
    same = features[:1, :1].expand(1, 4, -1)  # one vector placed in all four cells
    nll = model.model.cells_nll(same)
    assert nll.shape == (4,) and not torch.allclose(nll, nll[:1].expand(4), atol=1e-6)
    with pytest.raises(FlowInputError, match=r"model.position_dim=8 .* needs model.cells > 1"):
        tiny(LITE, [64], cells=1, position_dim=8)
