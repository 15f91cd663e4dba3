"""PaDiM learns: on the synthetic set the offline pretrained backbone beats 0.9 image AUROC and
clearly beats the same model with random weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from anomaly.data.datamodule import AnomalyDataModule
from anomaly.data.layouts import MVTecLayout
from anomaly.metrics import AnomalyMetrics
from anomaly.models.padim import Padim
from anomaly.nn.backbone import BackboneError, FeatureExtractor

LAYERS = ["blocks.1", "blocks.2", "blocks.4"]


def mean_image_auroc(root: Path, weights: str) -> float:
    """Fit and test PaDiM per category (separate setting); mean image AUROC."""
    torch.manual_seed(0)
    dm = AnomalyDataModule(root, MVTecLayout(), image_size=256, crop_size=224, batch_size=32, eval_batch_size=32)
    aurocs = []
    for category in dm.categories:
        data = dm.for_category(category)
        model = Padim(FeatureExtractor("efficientnet_lite0", LAYERS, weights), input_size=224, n_features=100)
        with torch.no_grad():
            model.on_train_epoch_start()
            for batch in data.train_dataloader():
                model.training_step(batch, 0)
            model.model.gaussian.finalize()
            metrics = AnomalyMetrics([category], metrics=("image_auroc",))
            for batch in data.test_dataloader():
                anomaly_map, score = model(batch["image"])
                assert anomaly_map.shape == batch["mask"].shape
                metrics.update(batch["category"], anomaly_map, score, batch["mask"], batch["label"])
        aurocs.append(metrics.compute()[category]["image_auroc"])
    return sum(aurocs) / len(aurocs)


@pytest.fixture(scope="module")
def pretrained_auroc(synthetic_root: Path) -> float:
    return mean_image_auroc(synthetic_root, "offline")


def test_pretrained_padim_beats_0_9_image_auroc(pretrained_auroc: float) -> None:
    assert pretrained_auroc >= 0.90


def test_pretrained_features_clearly_beat_random_ones(synthetic_root: Path, pretrained_auroc: float) -> None:
    assert pretrained_auroc - mean_image_auroc(synthetic_root, "none") >= 0.08


def test_offline_weights_are_the_imagenet_ones() -> None:
    """The packaged weights load into timm's layout and differ from a random init."""
    a = FeatureExtractor("efficientnet_lite0", LAYERS, "offline").model.state_dict()
    b = FeatureExtractor("efficientnet_lite0", LAYERS, "none").model.state_dict()
    assert a.keys() == b.keys()
    assert not torch.equal(a["conv_stem.weight"], b["conv_stem.weight"])
    assert a["bn1.running_var"].mean() != pytest.approx(1.0)  # real BN statistics, not the init


def test_unknown_layer_lists_the_valid_ones() -> None:
    with pytest.raises(BackboneError, match=r"choose from \['blocks.0', 'blocks.1'"):
        FeatureExtractor("efficientnet_lite0", ["layer1"], "none")


def test_hub_weights_without_internet_say_which_option_to_set(monkeypatch: pytest.MonkeyPatch) -> None:
    import timm

    create = timm.create_model

    def offline_create(name: str, pretrained: bool = False, **kwargs):
        if pretrained:  # what the hub download does on a machine without internet
            raise OSError("We couldn't connect to 'https://huggingface.co' to load this file.")
        return create(name, pretrained=False, **kwargs)

    monkeypatch.setattr(timm, "create_model", offline_create)
    with pytest.raises(BackboneError, match="model.backbone.weights=offline"):
        FeatureExtractor("resnet18", ["layer1"], "imagenet")


def test_offline_weights_for_another_model_are_refused() -> None:
    with pytest.raises(BackboneError, match="only available for"):
        FeatureExtractor("resnet18", ["layer1"], "offline")


def test_n_features_out_of_range_names_the_option() -> None:
    with pytest.raises(ValueError, match=r"model\.n_features=999 must be in 1\.\.176"):
        Padim(FeatureExtractor("efficientnet_lite0", LAYERS, "none"), input_size=64, n_features=999)


def test_a_weights_file_path_loads(tmp_path: Path) -> None:
    source = FeatureExtractor("efficientnet_lite0", LAYERS, "offline")
    path = tmp_path / "weights.pth"
    torch.save(source.model.state_dict(), path)
    loaded = FeatureExtractor("efficientnet_lite0", LAYERS, str(path))
    assert torch.equal(loaded.model.state_dict()["conv_stem.weight"], source.model.state_dict()["conv_stem.weight"])
    with pytest.raises(BackboneError, match="is not a file"):
        FeatureExtractor("efficientnet_lite0", LAYERS, str(tmp_path / "missing.pth"))


def test_pruned_channels_last_backbone_gives_the_same_features_as_timm() -> None:
    import timm

    fx = FeatureExtractor("efficientnet_lite0", LAYERS, "offline")
    reference = timm.create_model("efficientnet_lite0", features_only=True, out_indices=(1, 2, 3)).eval()
    reference.load_state_dict(fx.model.state_dict(), strict=False)
    assert len(fx.model.blocks) == 5 < len(reference.blocks)  # blocks 5 and 6 are never computed
    image = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        for ours, theirs in zip(fx(image).values(), reference(image), strict=True):
            torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
