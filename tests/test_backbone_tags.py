"""Pretrained tags in ``model.backbone.name`` (``resnet18.tv_in1k``): every weights source and the
name-based logic (layer lists, pruning, offline mapping) work with a tag; the paper presets use
torchvision's weights as the paper did. No download: weights=none, offline or a file."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from anomaly.conf import CONF_DIR
from anomaly.nn.backbone import BackboneError, FeatureExtractor

RESNET = ["layer1", "layer2", "layer3"]
LITE = ["blocks.1", "blocks.2", "blocks.4"]


def test_a_tagged_name_builds_the_same_architecture_with_random_weights() -> None:
    tagged = FeatureExtractor("resnet18.tv_in1k", RESNET, "none")
    plain = FeatureExtractor("resnet18", RESNET, "none")
    assert tagged.name == "resnet18.tv_in1k"
    assert tagged.channels == {"layer1": 64, "layer2": 128, "layer3": 256}
    assert tagged.strides == plain.strides == {"layer1": 4, "layer2": 8, "layer3": 16}
    a, b = tagged.model.state_dict(), plain.model.state_dict()
    assert a.keys() == b.keys() and all(a[k].shape == b[k].shape for k in a)
    assert [f.shape for f in tagged(torch.zeros(1, 3, 64, 64)).values()] == [
        torch.Size([1, 64, 16, 16]), torch.Size([1, 128, 8, 8]), torch.Size([1, 256, 4, 4])]


def test_wide_resnet_tag_gives_the_paper_channels() -> None:
    fx = FeatureExtractor("wide_resnet50_2.tv_in1k", RESNET, "none")
    assert fx.channels == {"layer1": 256, "layer2": 512, "layer3": 1024}


def test_imagenet_weights_are_requested_with_the_tag(monkeypatch: pytest.MonkeyPatch) -> None:
    create, asked = timm.create_model, []

    def recording_create(name: str, pretrained: bool = False, **kwargs):
        if pretrained:
            asked.append(name)
        return create(name, pretrained=False, **kwargs)  # no download: the architecture is what matters

    monkeypatch.setattr(timm, "create_model", recording_create)
    FeatureExtractor("resnet18.tv_in1k", RESNET, "imagenet")
    assert asked == ["resnet18.tv_in1k"]


def test_an_unknown_tag_names_the_valid_ones() -> None:
    with pytest.raises(BackboneError, match=r"no pretrained tag 'tv_in22k' for resnet18; choose from .*resnet18\.tv_in1k"):
        FeatureExtractor("resnet18.tv_in22k", RESNET, "none")
    with pytest.raises(BackboneError, match="is not a timm model"):
        FeatureExtractor("resnet181.tv_in1k", RESNET, "none")


def test_layer_list_check_works_with_a_tag() -> None:
    with pytest.raises(BackboneError, match=r"'resnet18.tv_in1k' does not have; choose from \['act1', 'layer1'"):
        FeatureExtractor("resnet18.tv_in1k", ["blocks.1"], "none")


def test_offline_weights_and_pruning_work_with_a_tag() -> None:
    tagged = FeatureExtractor("efficientnet_lite0.ra_in1k", LITE, "offline")
    plain = FeatureExtractor("efficientnet_lite0", LITE, "offline")
    assert len(tagged.model.blocks) == len(plain.model.blocks) == 5  # blocks 5 and 6 dropped
    for key, value in plain.model.state_dict().items():
        assert torch.equal(tagged.model.state_dict()[key], value), key


def test_a_weights_file_loads_into_a_tagged_name(tmp_path: Path) -> None:
    source = FeatureExtractor("resnet18", RESNET, "none")
    path = tmp_path / "r18.pth"
    torch.save(source.model.state_dict(), path)
    loaded = FeatureExtractor("resnet18.tv_in1k", RESNET, str(path))
    assert torch.equal(loaded.model.state_dict()["conv1.weight"], source.model.state_dict()["conv1.weight"])


@pytest.mark.parametrize(("experiment", "name"), [("padim_r18", "resnet18.tv_in1k"),
                                                  ("padim_wr50", "wide_resnet50_2.tv_in1k")])
def test_paper_presets_use_torchvision_weights(experiment: str, name: str) -> None:
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment={experiment}", "model.backbone.weights=none"])
    assert cfg.model.backbone.name == name
    fx = FeatureExtractor(cfg.model.backbone.name, list(cfg.model.backbone.layers), cfg.model.backbone.weights)
    assert fx.name == name
