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


class SmoothBackbone(torch.nn.Module):
    """Features from pooling and sines only: the same numbers with or without autocast."""

    layers = ["a", "b"]
    channels = {"a": 6, "b": 6}
    strides = {"a": 4, "b": 8}
    name = "smooth"

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {}
        for layer in self.layers:
            base = torch.nn.functional.avg_pool2d(image, self.strides[layer])
            out[layer] = torch.cat([torch.sin(base * 3 + 1), torch.cos(base * 2)], 1)
        return out


def smooth_images(seed: int, n: int, size: int = 32) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.nn.functional.interpolate(torch.rand(n, 3, 8, 8, generator=generator), size=(size, size),
                                           mode="bilinear", align_corners=False)


def fitted_padim(train: torch.Tensor, size: int = 32) -> Padim:
    model = Padim(SmoothBackbone(), input_size=size, n_features=8, sigma=1.0)
    model.on_train_epoch_start()
    model.training_step({"image": train}, 0)
    model.model.gaussian.finalize()
    return model


def test_map_under_bfloat16_autocast_equals_the_float32_map() -> None:
    train, test = smooth_images(0, 20), smooth_images(1, 2)
    reference_map, reference_score = fitted_padim(train)(test)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model = fitted_padim(train)
        anomaly_map, score = model(test)
    assert anomaly_map.dtype == torch.float32
    torch.testing.assert_close(anomaly_map, reference_map, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(score, reference_score, rtol=1e-6, atol=1e-6)


def test_images_of_another_size_are_refused_naming_both_sizes() -> None:
    from anomaly.nn.padim import InputSizeError
    from anomaly.utils.errors import user_message

    model = fitted_padim(smooth_images(0, 10))
    with pytest.raises(InputSizeError, match=r"built for 32×32 images.*got 48×40") as error:
        model(smooth_images(1, 1, 48)[..., :40])
    assert user_message(error.value) == str(error.value)
    with pytest.raises(InputSizeError):  # nor trained on
        model.training_step({"image": smooth_images(1, 2, 64)}, 0)


def test_under_synthesis_the_gaussians_see_only_the_normal_source_images() -> None:
    normal = smooth_images(0, 12)
    synthesized = normal.clone()
    synthesized[:, :, 8:20, 8:20] = 1.0  # what a synthesis strategy pastes into ``image``
    plain = fitted_padim(normal)
    model = Padim(SmoothBackbone(), input_size=32, n_features=8, sigma=1.0)
    model.on_train_epoch_start()
    model.training_step({"image": synthesized, "source": normal, "label": torch.ones(12)}, 0)
    model.model.gaussian.finalize()
    torch.testing.assert_close(model.model.gaussian.mean, plain.model.gaussian.mean)
    torch.testing.assert_close(model.model.gaussian.precision, plain.model.gaussian.precision)


def test_user_errors_of_padim_are_one_sentence() -> None:
    from anomaly.config.check import ConfigError
    from anomaly.models.base import UnfittedModelError
    from anomaly.nn.gaussian import DegenerateStatisticsError
    from anomaly.utils.errors import user_message

    with pytest.raises(ConfigError, match=r"model\.n_features=13 must be in 1\.\.12") as too_many:
        Padim(SmoothBackbone(), input_size=32, n_features=13)
    with pytest.raises(UnfittedModelError, match="no fitted statistics") as unfitted:
        Padim(SmoothBackbone(), input_size=32, n_features=8)(smooth_images(0, 1))
    model = Padim(SmoothBackbone(), input_size=32, n_features=8)
    model.on_train_epoch_start()
    model.training_step({"image": smooth_images(0, 1)}, 0)
    with pytest.raises(DegenerateStatisticsError, match="at least 2 training images") as one_image:
        model.model.gaussian.finalize()
    model = Padim(SmoothBackbone(), input_size=32, n_features=8, epsilon=-10.0)
    model.training_step({"image": smooth_images(0, 4)}, 0)
    with pytest.raises(DegenerateStatisticsError, match="not positive definite") as not_pd:
        model.model.gaussian.finalize()
    for error in (too_many, unfitted, one_image, not_pd):
        message = user_message(error.value)
        assert message == str(error.value) and "\n" not in message


def test_a_backbone_module_is_saved_as_plain_data_once_and_rebuilds_the_model(
        recwarn: pytest.WarningsRecorder) -> None:
    train, test = smooth_images(0, 8, 64), smooth_images(1, 1, 64)
    model = Padim(FeatureExtractor("efficientnet_lite0", LAYERS, "none"), input_size=64, n_features=20)
    assert not [w for w in recwarn if "backbone" in str(w.message)]  # no "saved twice" warning
    assert model.hparams["backbone"] == {"_target_": "anomaly.nn.backbone.FeatureExtractor",
                                         "name": "efficientnet_lite0", "layers": LAYERS, "weights": "none",
                                         "channels_last": True}
    with torch.no_grad():
        model.on_train_epoch_start()
        model.training_step({"image": train}, 0)
        model.model.gaussian.finalize()
        rebuilt = Padim(**model.hparams)
        rebuilt.load_state_dict(model.state_dict())  # Σ⁻¹ is allocated on load
        torch.testing.assert_close(rebuilt(test)[0], model(test)[0])


def test_the_cross_fit_from_sums_equals_refitting_a_copy_per_fold(synthetic_root: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """PaDiM's leave-fold-out scores from total − fold sums (no ``Trainer.fit``) are those of a copy refitted
    without each fold, the generic cross-fit; the run's model is left unfitted, where it was."""
    import lightning as L

    from anomaly.engine.calibration import cross_fit

    data = AnomalyDataModule(synthetic_root, MVTecLayout(), "capsule", image_size=32, batch_size=8, eval_batch_size=8)
    model = Padim(SmoothBackbone(), input_size=32, n_features=8, sigma=1.0)

    def trainer() -> L.Trainer:
        return L.Trainer(accelerator="cpu", devices=1, max_epochs=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)

    fits: list[object] = []
    real_fit = L.Trainer.fit
    monkeypatch.setattr(L.Trainer, "fit", lambda self, *a, **k: fits.append(a) or real_fit(self, *a, **k))
    fast = cross_fit(model, data, trainer)["groups"]["capsule"]
    assert fits == [] and not bool(model.model.gaussian.fitted)
    monkeypatch.setattr(Padim, "cross_fit_outputs", lambda self, data, trainer: None)
    refitted = cross_fit(model, data, trainer)["groups"]["capsule"]
    assert len(fits) == data.calibration_folds() == 5
    assert fast["images"] == refitted["images"] == 60
    torch.testing.assert_close(torch.tensor(fast["scores"]), torch.tensor(refitted["scores"]), rtol=1e-4, atol=0)
    for key in ("image", "pixel", "map_min", "map_max"):
        assert fast[key] == pytest.approx(refitted[key], rel=1e-4)
