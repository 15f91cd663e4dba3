"""RealNet (model=realnet): learns both losses, its AFS channels survive the checkpoint, re-tests to the same
metrics, and refuses what it cannot learn from."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict, read_write
from torch.utils.data import ConcatDataset

import anomaly.config.resolvers  # noqa: F401  (the ${anomaly.*} resolvers of the configs)
from anomaly.conf import CONF_DIR
from anomaly.data.datamodule import AnomalyDataModule
from anomaly.data.layouts import MVTecLayout
from anomaly.engine import fit, retest
from anomaly.models.guards import NonFiniteLossError
from anomaly.models.realnet import RealNet
from anomaly.nn.realnet import RealNetConfigError
from anomaly.nn.realnet.afs import lowest
from anomaly.synthesis.perlin import PerlinSynthesis

pytestmark = pytest.mark.one_thread
BACKBONE = {"_target_": "anomaly.nn.backbone.FeatureExtractor", "name": "efficientnet_lite0",
            "layers": ["blocks.1", "blocks.2"], "weights": "offline"}
TINY = ["model.backbone.layers=[blocks.1,blocks.2]", "model.k=[8,16]", "model.k_max=8", "model.k_mean=8",
        "model.afs_batches=2", "model.pool_size=4"]


def tiny(**options) -> RealNet:
    torch.manual_seed(0)
    return RealNet(BACKBONE, **{"k": [8, 16], "k_max": 8, "k_mean": 8, "pool_size": 4, "lr": 1e-3, **options})


def pasted_batch(n: int = 4, side: int = 32) -> dict:
    """Normal images with a bright square pasted into half of them (image, source, mask as synthesis gives)."""
    generator = torch.Generator().manual_seed(0)
    source = torch.randn(n, 3, side, side, generator=generator) * 0.2
    image, mask = source.clone(), torch.zeros(n, 1, side, side)
    for i in range(0, n, 2):
        y, x = torch.randint(0, side - 12, (2,), generator=generator).tolist()
        image[i, :, y:y + 12, x:x + 12] = 2.0
        mask[i, :, y:y + 12, x:x + 12] = 1.0
    return {"image": image, "source": source, "mask": mask}


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)` but the `self.trainer`:UserWarning")
def test_a_short_run_lowers_both_losses() -> None:
    model = tiny(lr=3e-3)
    model.model.feature_scale.fill_(10.0)  # what normalize=true fits for these layers (RMS about 10)
    optimizer = model.configure_optimizers()
    batch = pasted_batch()
    history = []
    for step in range(15):
        losses = model.losses(batch)
        history.append({k: float(v.detach()) for k, v in losses.items()})
        optimizer.zero_grad()
        model.training_step(batch, step).backward()
        optimizer.step()
    first, last = history[:3], history[-3:]
    for key in ("seg", "mse"):
        before, after = sum(h[key] for h in first) / 3, sum(h[key] for h in last) / 3
        assert after < 0.7 * before, (key, [round(h[key], 4) for h in history[::4]])


def kept_by_hand(model: RealNet, images: torch.Tensor) -> list[torch.Tensor]:
    """The selected channels of each backbone layer divided by the layer's scale, read off the backbone directly."""
    with torch.no_grad():
        features = model.model.backbone(images)
    return [features[layer][:, model.model.selection.indices(i)] / model.model.feature_scale[i]
            for i, layer in enumerate(model.model.backbone.layers)]


def test_the_mse_target_at_initialisation_is_the_normal_sources_features() -> None:
    model = tiny(selection="random")
    model.model.feature_scale.copy_(torch.tensor([10.0, 4.0]))
    batch = pasted_batch()
    with torch.no_grad():
        mse = float(model.losses(batch)["mse"])
    # The UNets start at zero, so Σ_layers MSE(R(F(image)), F(source)) = Σ_layers mean(F(source)²).
    expected = sum(float(f.pow(2).mean()) for f in kept_by_hand(model, batch["source"]))
    of_the_image = sum(float(f.pow(2).mean()) for f in kept_by_hand(model, batch["image"]))
    assert mse == pytest.approx(expected, rel=1e-5)
    assert abs(expected - of_the_image) > 0.05 * expected  # the two targets are told apart


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)` but the `self.trainer`:UserWarning")
def test_real_few_shot_anomalies_are_left_out_of_the_feature_mse_only() -> None:
    model = tiny(selection="random")
    batch = pasted_batch()
    generator = torch.Generator().manual_seed(1)
    real = torch.randn(2, 3, 32, 32, generator=generator) * 0.6  # real anomalies: their own `source`
    batch = {"image": torch.cat([batch["image"], real]), "source": torch.cat([batch["source"], real]),
             "mask": torch.cat([batch["mask"], torch.ones(2, 1, 32, 32)]),
             "defect": ["good"] * 4 + ["crack", "scratch"]}
    with torch.no_grad():
        losses = model.losses(batch)
        kept = sum(float(f[:4].pow(2).mean()) for f in kept_by_hand(model, batch["source"]))
        every = sum(float(f.pow(2).mean()) for f in kept_by_hand(model, batch["source"]))
        seg_without = model.losses({k: v[:4] for k, v in batch.items()})["seg"]
    assert float(losses["mse"]) == pytest.approx(kept, rel=1e-5) and abs(every - kept) > 0.05 * kept
    assert float(losses["seg"]) != pytest.approx(float(seg_without), rel=1e-3)  # their masks still train the head
    only_real = {k: v[4:] for k, v in batch.items()}
    loss = model.training_step(only_real, 0)
    assert float(model.losses(only_real)["mse"].detach()) == 0.0 and torch.isfinite(loss)
    loss.backward()  # a batch of real anomalies only still trains the segmentation head


def test_the_feature_cache_gives_the_same_features_and_runs_the_backbone_on_changed_images_only() -> None:
    cached, plain = tiny(feature_cache=16, selection="random"), tiny(selection="random")
    cached.model.feature_scale.copy_(torch.tensor([10.0, 4.0]))  # as normalize=true fits them
    plain.load_state_dict(cached.state_dict())
    seen: list[int] = []
    cached.model.backbone.register_forward_hook(lambda module, args, out: seen.append(args[0].shape[0]))
    first = pasted_batch()  # images 0 and 2 carry a pasted square; 1 and 3 were left normal
    again = {key: value.flip(0) for key, value in first.items()}  # the same images in another order
    for batch in (first, again):
        got = cached.training_features(batch["image"], batch["source"])
        want = plain.training_features(batch["image"], batch["source"])
        for a, b in zip(got[0] + got[1], want[0] + want[1], strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    # first call: the 4 sources, then the 2 changed images; second call: the 2 changed images only
    assert seen == [4, 2, 2] and len(cached.feature_cache) == 4


def test_a_nan_loss_stops_with_the_shared_guard() -> None:
    with pytest.raises(NonFiniteLossError, match="RealNet's training loss became nan"):
        tiny().on_before_backward(torch.tensor(float("nan")))


def test_a_cosine_schedule_takes_the_learning_rate_to_zero_over_the_run() -> None:
    with pytest.raises(RealNetConfigError, match=r"model.lr_schedule='step' is unknown"):
        tiny(lr_schedule="step")
    model = tiny(lr_schedule="cosine")
    model._trainer = SimpleNamespace(estimated_stepping_batches=4)  # all configure_optimizers reads of it
    config = model.configure_optimizers()
    optimizer, schedule = config["optimizer"], config["lr_scheduler"]["scheduler"]
    assert config["lr_scheduler"]["interval"] == "step"
    rates = [optimizer.param_groups[0]["lr"]]
    for _ in range(4):
        optimizer.step()
        schedule.step()
        rates.append(optimizer.param_groups[0]["lr"])
    assert rates[0] == pytest.approx(1e-3) and rates[-1] == 0.0
    assert all(a > b for a, b in zip(rates, rates[1:], strict=False))
    assert isinstance(tiny().configure_optimizers(), torch.optim.Adam)  # constant (the paper)


def test_afs_scores_the_synthetic_part_when_real_anomalies_join_the_training_set(synthetic_root: Path) -> None:
    data = AnomalyDataModule(synthetic_root, MVTecLayout(), category="wood", image_size=64, num_workers=0,
                             batch_size=4, synthesis=PerlinSynthesis(), few_shot_anomalies=2)
    data.setup("fit")
    assert isinstance(data.dataset("train"), ConcatDataset)  # normal images + 2 real anomalies
    model = tiny()
    model._trainer = SimpleNamespace(datamodule=data)  # all _anomalous_batches reads of it
    batch = next(model._anomalous_batches())
    assert bool(batch["mask"].flatten(1).any(1).all()), "every AFS image carries a synthetic anomaly"
    assert not (batch["image"] == batch["source"]).flatten(1).all(1).any()


def test_synthesis_none_is_one_sentence(synthetic_root: Path, tmp_path: Path) -> None:
    data = AnomalyDataModule(synthetic_root, MVTecLayout(), category="wood", image_size=64, num_workers=0)
    trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu", default_root_dir=tmp_path)
    with pytest.raises(RealNetConfigError, match=r"^RealNet learns from synthetic anomalies and cannot train with "
                                                 r"synthesis=none; set synthesis=perlin, .*\.$"):
        trainer.fit(tiny(), datamodule=data)


def composed(config: str, overrides: list[str], out: Path) -> DictConfig:
    """A composed entry-point config with the hydra-runtime values a real run has (run folder ``out``)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose(config, overrides=overrides, return_hydra_config=True)
    with read_write(cfg), open_dict(cfg):
        cfg.paths.root_dir, cfg.paths.output_dir, cfg.hydra.runtime.output_dir = str(out), str(out), str(out)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]  # as a running main sees it: hydra's node lives in HydraConfig only
    return cfg


def test_checkpoint_keeps_the_afs_channels_and_evaluate_reproduces_the_metrics(synthetic_root: Path,
                                                                               tmp_path: Path) -> None:
    train = composed("train", ["experiment=realnet_cpu", f"data.root={synthetic_root}", "data.category=wood",
                               "data.prepare=null", "data.image_size=64", "data.num_workers=0", "data.batch_size=8",
                               *TINY, "trainer.max_epochs=1", "trainer.check_val_every_n_epoch=1",
                               "callbacks.heatmaps.n_images=1", "logger=none", "trainer.enable_progress_bar=false"],
                     tmp_path / "run")
    fit(train)
    best = tmp_path / "run" / "checkpoints" / "best.ckpt"
    payload = torch.load(best, map_location="cpu", weights_only=True)
    assert payload["hyper_parameters"]["backbone"]["weights"] == "none"
    loaded = RealNet.load_from_checkpoint(best, weights_only=True)
    selection = loaded.model.selection
    assert bool(selection.fitted) and int(selection.batches) == 2
    for i, k in enumerate([8, 16]):
        assert torch.equal(selection.indices(i), payload["state_dict"][f"model.selection.indices_{i}"])
        assert selection.scores(i).abs().sum() > 0 and torch.equal(selection.indices(i), lowest(selection.scores(i), k))
    assert bool(loaded.model.scale_fitted) and (loaded.model.feature_scale != 1).all()

    retest(composed("eval", [f"ckpt_path={tmp_path / 'run'}", "logger=none", "heatmaps=1",
                             "trainer.enable_progress_bar=false"], tmp_path / "eval"))
    first = json.loads((tmp_path / "run" / "metrics.json").read_text())["categories"]
    second = json.loads((tmp_path / "eval" / "metrics.json").read_text())["categories"]
    assert second.keys() == first.keys() == {"wood"}
    for name, value in first["wood"].items():
        assert second["wood"][name] == pytest.approx(value, abs=1e-6), name


def test_the_paper_preset_composes_realnets_recipe(tmp_path: Path) -> None:
    cfg = composed("train", ["experiment=realnet_mvtec", "data=mvtec", "data.root=x"], tmp_path)
    model, data = cfg.model, cfg.data
    assert (model.backbone.name, list(model.backbone.layers), model.backbone.weights) == (
        "wide_resnet50_2", ["layer1", "layer2", "layer3", "layer4"], "imagenet")
    assert list(model.k) == [256, 512, 512, 256] and model.selection == "afs" and model.afs_batches == 64
    assert (model.k_max, model.k_mean, model.num_residual_layers) == (256, 256, 2)
    assert (model.width_ratio, list(model.channel_mult), model.num_res_blocks, list(model.attention_levels)) == (
        0.5, [1, 2, 4], 2, [2, 4])
    assert (model.pool_size, model.score_border, model.normalize) == (16, 0, False)
    assert (model.lr, list(model.betas), model.lr_schedule, model.seg_weight, model.mse_weight) == (
        1e-4, [0.9, 0.999], "constant", 1.0, 1.0)
    assert (data.image_size, data.crop_size, data.batch_size, data.setting) == (256, None, 16, "separate")
    assert cfg.trainer.max_epochs == 1000 and cfg.trainer.accelerator == "gpu"
    synthesis = cfg.synthesis
    assert synthesis._target_.endswith("SDASSynthesis") and synthesis.normal_probability == 0.5
    assert list(synthesis.beta) == [0.5, 1.0] and list(synthesis.fill.sampler.s) == [0.1, 0.2]
    assert synthesis.fill.sampler.num_steps == 20 and synthesis.fill.sampler.method == "ancestral"
    foreground = synthesis.foreground  # RealNet's own per-category rule, square(6) at 256 px
    assert foreground.kernel == "exact" and foreground.close_frac * 256 == foreground.open_frac * 256 == 6
    assert {c: (v.method, v.polarity) for c, v in foreground.per_category.items()} == {
        "pill": ("otsu", "bright"), "hazelnut": ("triangle", "bright"), "metal_nut": ("triangle", "bright"),
        "toothbrush": ("triangle", "bright"), **{c: ("otsu", "dark") for c in ("bottle", "capsule", "grid", "screw",
                                                                             "zipper")}}
    assert sorted(foreground.texture_categories) == ["cable", "carpet", "leather", "tile", "transistor", "wood"]
