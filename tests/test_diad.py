"""DiAD as a LightningModule: it learns, resumes, fails clearly, and re-tests from its checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from anomaly.models.diad import DiAD
from anomaly.models.guards import NonFiniteLossError
from anomaly.nn.backbone import FeatureExtractor
from anomaly.nn.diffusion import WeightsError
from anomaly.nn.diffusion.latents import AutoencoderLatent, FeatureLatent
from anomaly.nn.diffusion.presets import DiffusionConfigError
from anomaly.nn.feature_distance import ScoringConfigError
from tests.conftest import REPO

TINY_UNET = {"preset": "cpu", "block_out_channels": [16, 32, 32], "layers_per_block": 1, "norm_num_groups": 8,
             "cross_attention_dim": 16, "attention_head_dim": 4}
TINY_AE = {"preset": "cpu", "block_out_channels": [16, 16, 16]}
AE = "anomaly.nn.diffusion.latents.AutoencoderLatent"
FEATURES = "anomaly.nn.diffusion.latents.FeatureLatent"


def ae(**options: Any) -> dict[str, Any]:
    """A ``model.latent`` node of the tiny autoencoder latent."""
    return {"_target_": AE, **TINY_AE, "fit_steps": 2, "scale": "auto", **options}


def features(**options: Any) -> dict[str, Any]:
    """A ``model.latent`` node of the feature latent."""
    return {"_target_": FEATURES, **options}
CATEGORIES = ["a", "b"]


pytestmark = pytest.mark.one_thread


class Images(Dataset):
    """Eight fixed 32² images of two categories as batch dicts."""

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        self.images = torch.randn(8, 3, 32, 32, generator=g) * 0.3

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"image": self.images[i], "mask": torch.zeros(1, 32, 32), "label": 0,
                "category": CATEGORIES[i % 2], "defect": "good", "path": f"{i}.png"}


class Data(L.LightningDataModule):
    categories = CATEGORIES

    def train_dataloader(self) -> DataLoader:
        return DataLoader(Images(), batch_size=4, shuffle=False)


def tiny(**overrides: Any) -> DiAD:
    torch.manual_seed(0)
    args: dict[str, Any] = {
        "backbone": FeatureExtractor("efficientnet_lite0", ["blocks.1", "blocks.2"], weights="none"),
        "input_size": 32, "unet": TINY_UNET, "latent": ae(), "lr": 1e-3,
        "n_steps": 2, "ema_decay": 0.5, "scoring": {"sigma": 1.0, "pool_size": 4},
    }
    return DiAD(**{**args, **overrides})


def trainer(tmp_path: Path, steps: int, **kwargs: Any) -> L.Trainer:
    return L.Trainer(max_steps=steps, max_epochs=-1, accelerator="cpu", logger=False, enable_progress_bar=False,
                     enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp_path, **kwargs)


def eps_loss(model: DiAD, batch: torch.Tensor) -> float:
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        z0 = model.encode(batch)
        noise = torch.randn(z0.shape, generator=g)
        t = torch.randint(0, 1000, (z0.shape[0],), generator=g)
        zt = model.scheduler.add_noise(z0, noise, t)
        return float((model.denoiser(zt, t, batch) - noise).pow(2).mean())


def test_a_short_training_run_lowers_the_noise_prediction_loss(tmp_path: Path) -> None:
    """...and with no pretrained UNet weights (unet.train_encoder=auto) the whole UNet trains."""
    model = tiny(ema=False)
    assert isinstance(model.latent, AutoencoderLatent) and model.denoiser.train_encoder
    batch = Images().images
    trainer(tmp_path, 2).fit(model, datamodule=Data())  # the autoencoder phase
    model.latent.prepare(batch, lambda value: value)  # freezes it and sets the scale
    before = eps_loss(model, batch)
    ae_before = model.latent.autoencoder.encoder.conv_in.weight.detach().clone()
    encoder_before = model.denoiser.unet.down_blocks[0].resnets[0].conv1.weight.detach().clone()
    trainer(tmp_path, 32).fit(model, datamodule=Data())
    assert eps_loss(model, batch) < 0.8 * before
    assert torch.equal(model.latent.autoencoder.encoder.conv_in.weight, ae_before)  # frozen after its phase
    assert not torch.equal(model.denoiser.unet.down_blocks[0].resnets[0].conv1.weight, encoder_before)
    assert torch.isfinite(model.latent.scale) and float(model.latent.scale) > 0


def test_the_paper_keeps_a_pretrained_unets_encoder_frozen(tmp_path: Path) -> None:
    model = tiny(ema=False, unet={**TINY_UNET, "train_encoder": False})
    frozen_before = model.denoiser.unet.down_blocks[0].resnets[0].conv1.weight.detach().clone()
    decoder_before = model.denoiser.unet.up_blocks[0].resnets[0].conv1.weight.detach().clone()
    trainer(tmp_path, 6).fit(model, datamodule=Data())
    assert torch.equal(model.denoiser.unet.down_blocks[0].resnets[0].conv1.weight, frozen_before)
    assert not torch.equal(model.denoiser.unet.up_blocks[0].resnets[0].conv1.weight, decoder_before)


def test_resume_continues_the_schedule_the_ema_and_the_latent_scale(tmp_path: Path) -> None:
    model = tiny(warmup_steps=10)
    first = trainer(tmp_path, 6)
    first.fit(model, datamodule=Data())
    path = tmp_path / "mid.ckpt"
    first.save_checkpoint(path)
    scale = float(model.latent.scale)
    resumed = tiny(warmup_steps=10)
    again = trainer(tmp_path, 10)
    again.fit(resumed, datamodule=Data(), ckpt_path=path)
    assert again.global_step == 10
    assert resumed.ema.updates == 8  # one per diffusion step: 4 before the checkpoint, 4 after
    assert float(resumed.latent.scale) == scale  # estimated once, restored, not re-estimated
    schedule = again.lr_scheduler_configs[0].scheduler
    assert schedule.last_epoch == 10 and schedule.get_last_lr()[0] == pytest.approx(1e-3 * 0.9)


class LearningRates(L.Callback):
    """Records every parameter group's LR at the start of each training batch."""

    def __init__(self) -> None:
        self.seen: list[list[float]] = []

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        self.seen.append([group["lr"] for group in trainer.optimizers[0].param_groups])


def test_the_autoencoder_phase_decays_its_lr_to_zero_and_the_diffusion_phase_warms_up(tmp_path: Path) -> None:
    model = tiny(latent=ae(fit_steps=4, lr=1e-3), warmup_steps=2, ema=False)
    lrs = LearningRates()
    trainer(tmp_path, 8, callbacks=[lrs]).fit(model, datamodule=Data())
    diffusion, autoencoder = zip(*lrs.seen, strict=True)
    assert autoencoder[:5] == pytest.approx([1e-3, 1e-3 * 0.8536, 5e-4, 1e-3 * 0.1464, 0.0], abs=1e-7)
    assert autoencoder[5:] == (0.0, 0.0, 0.0)
    assert diffusion == pytest.approx([0, 0, 0, 0, 5e-4, 1e-3, 1e-3, 1e-3])


def test_the_autoencoder_stage_can_decay_its_lr_to_zero_over_the_run(tmp_path: Path) -> None:
    from anomaly.models.diad_autoencoder import DiADAutoencoder

    with pytest.raises(ValueError, match=r"model.lr_schedule='step' is unknown"):
        DiADAutoencoder(autoencoder=TINY_AE, lr_schedule="step")
    lrs = LearningRates()
    stage = DiADAutoencoder(autoencoder=TINY_AE, lr=1e-3, lr_schedule="cosine")
    trainer(tmp_path, 4, callbacks=[lrs]).fit(stage, datamodule=Data())
    assert [lr for (lr,) in lrs.seen] == pytest.approx([1e-3, 1e-3 * 0.8536, 5e-4, 1e-3 * 0.1464], abs=1e-7)


def test_nan_loss_stops_with_the_step_and_a_hint(tmp_path: Path) -> None:
    model = tiny(latent=ae(fit_steps=1))
    with torch.no_grad():
        model.latent.autoencoder.decoder.conv_out.bias.fill_(float("nan"))
    with pytest.raises(NonFiniteLossError, match=r"at step 0.*ckpt_path=last"):
        trainer(tmp_path, 3).fit(model, datamodule=Data())


def test_bad_sizes_options_and_missing_weights_fail_with_one_clear_sentence(tmp_path: Path) -> None:
    with pytest.raises(DiffusionConfigError, match="multiples of 16.*use e.g. 32 or 48"):
        tiny(input_size=40)
    with pytest.raises(WeightsError, match="model.latent.weights.*fit_steps"):
        tiny(latent=ae(fit_steps=0))
    with pytest.raises(WeightsError, match="does not exist.*diad_autoencoder"):
        tiny(latent=ae(weights=str(tmp_path / "ae.ckpt")))
    with pytest.raises(WeightsError, match="model.unet.weights=.*model.download=true"):
        tiny(unet={**TINY_UNET, "weights": "stable-diffusion-v1-5/stable-diffusion-v1-5"})
    with pytest.raises(DiffusionConfigError, match="model.control"):
        tiny(control="some")
    with pytest.raises(DiffusionConfigError, match="model.sff_input=raw is not valid"):
        tiny(sff_input="raw")
    with pytest.raises(DiffusionConfigError, match="model.latent._target_=pixels cannot be imported"):
        tiny(latent={"_target_": "pixels"})
    with pytest.raises(DiffusionConfigError, match=r"model.latent has \['reference'\], which FeatureLatent does not"):
        tiny(latent=features(reference="autoencoder"))
    # Validating inside the autoencoder's fitting phase (no denoiser yet) is refused, naming both options.
    fitting = tiny(latent=ae(fit_steps=4))
    with pytest.raises(DiffusionConfigError, match=r"step 2 falls in .*fit_steps=4.*trainer.val_check_interval to at least 4"):
        fitting._check_not_fitting(2)
    fitting._check_not_fitting(4)
    # A typo in the scoring layers stops at construction, not at the first test batch after training.
    with pytest.raises(ScoringConfigError, match=r"model.scoring.layers has \['blocks.9'\].*choose from"):
        tiny(scoring={"layers": ["blocks.9"]})


def test_inference_is_batch_independent_and_class_conditioning_needs_known_categories(tmp_path: Path) -> None:
    model = tiny(context={"kind": "class", "num_classes": 4})
    trainer(tmp_path, 4).fit(model, datamodule=Data())
    model.eval()
    images = Images().images[:4]
    out = model.score_batch({"image": images, "category": ["a", "b", "a", "b"]})
    assert out.anomaly_map.shape == (4, 1, 32, 32) and out.score.shape == (4,)
    assert out.reconstruction.shape == (4, 3, 32, 32) and out.raw_map.shape == (4, 1, 32, 32)
    single = model.score_batch({"image": images[1:2], "category": ["b"]})
    torch.testing.assert_close(single.score, out.score[1:2], rtol=1e-4, atol=1e-5)
    other = model.score_batch({"image": images[1:2], "category": ["a"]})
    assert not torch.equal(other.reconstruction, single.reconstruction)  # the category conditions the denoiser
    with pytest.raises(DiffusionConfigError, match=r"\['c'\] were not trained"):
        model.score_batch({"image": images[:1], "category": ["c"]})
    with pytest.raises(DiffusionConfigError, match="needs each image's category"):
        model(images[:1])


EXPERIMENT_ARGS = {
    "diad_pixel_cpu": ["model.latent.fit_steps=3", "+model.latent.block_out_channels=[16,16,16]"],
    # the feature latent, calibrated on the normal training images before each test
    "diad_cpu": ["model.latent.decoder_width=16", "callbacks.model_checkpoint.every_n_train_steps=3"],
}


@pytest.mark.skipif(os.environ.get("ANOMALY_FAST") == "1", reason="end-to-end run")
@pytest.mark.parametrize("experiment", sorted(EXPERIMENT_ARGS))
def test_train_then_evaluate_reproduces_the_metrics(experiment: str, synthetic_root: Path, tmp_path: Path) -> None:
    """...even after the pretrained weights file the run was built from is gone."""
    from anomaly.nn.backbone import offline_state_dict

    run_dir, eval_dir = tmp_path / "run", tmp_path / "eval"
    weights = tmp_path / "lite0.pth"
    torch.save(offline_state_dict("efficientnet_lite0"), weights)
    env = {**os.environ, "ANOMALY_ROOT": str(tmp_path), "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    tiny_args = [f"+model.unet.{k}={json.dumps(v).replace(' ', '')}" for k, v in TINY_UNET.items()
                 if k not in ("preset", "layers_per_block")]
    train = [sys.executable, "-m", "anomaly.train", f"experiment={experiment}", f"data.root={synthetic_root}",
             "data.category=[capsule,fabric]", "data.prepare=null", "data.image_size=32", "data.num_workers=0",
             "trainer.max_steps=6", "model.n_steps=2", *tiny_args, *EXPERIMENT_ARGS[experiment],
             "model.scoring.resize=null", f"model.backbone.weights={weights}", "model.unet.layers_per_block=1",
             "data.val=none", "callbacks.heatmaps.n_images=1", "trainer.enable_progress_bar=false",
             f"hydra.run.dir={run_dir}"]
    result = subprocess.run(train, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    weights.unlink()  # evaluate rebuilds from the architecture stored in the checkpoint
    evaluate = [sys.executable, "-m", "anomaly.evaluate", f"ckpt_path={run_dir}", f"hydra.run.dir={eval_dir}"]
    result = subprocess.run(evaluate, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    trained = json.loads((run_dir / "metrics.json").read_text())
    again = json.loads((eval_dir / "metrics.json").read_text())
    assert trained["setting"] == "unified" and set(trained["categories"]) == {"capsule", "fabric"}
    for category, values in trained["categories"].items():
        for name, value in values.items():
            assert again["categories"][category][name] == pytest.approx(value, abs=1e-6), (category, name)


def ready(model: DiAD) -> DiAD:
    """The tiny autoencoder model past its fitting phase, with a unit latent scale."""
    model.latent.fit_steps = 0
    model.latent.scale.fill_(1.0)
    return model


def test_with_a_synthesis_source_the_denoiser_learns_to_repair(monkeypatch: pytest.MonkeyPatch) -> None:
    import anomaly.models.diad as diad

    model = ready(tiny(ema=False, scheduler={"prediction_type": "sample"}))
    monkeypatch.setattr(model, "encode", lambda image, sample=False, cached=False: torch.nn.functional.avg_pool2d(image, 4))
    noised: list[torch.Tensor] = []
    monkeypatch.setattr(diad, "q_sample", lambda s, z, t, n: noised.append(z) or s.add_noise(z, n, t))
    seen: dict[str, torch.Tensor] = {}

    def denoiser(output: str):
        def run(x_t: torch.Tensor, t: torch.Tensor, hint: torch.Tensor, labels: Any = None) -> torch.Tensor:
            seen["hint"] = hint
            return model.encode(source if output == "source" else image)
        return run

    source = Images().images[:4]
    image = source.clone()
    image[1::2, :, 8:16, 8:16] = 3.0  # a synthetic anomaly on rows 1 and 3
    batch = {"image": image, "source": source, "label": torch.tensor([0, 1, 0, 1]), "category": ["a"] * 4}
    monkeypatch.setattr(model.denoiser, "forward", denoiser("source"))
    repaired = model.training_step(batch, 0)
    assert torch.equal(seen["hint"], image)  # the SG branch sees the anomaly...
    torch.testing.assert_close(noised[-1], model.encode(image))  # ...and so does the noisy latent
    assert float(repaired) < 1e-10  # but the target is the normal source
    monkeypatch.setattr(model.denoiser, "forward", denoiser("image"))
    assert float(model.training_step(batch, 0)) > 0.01  # reproducing the anomaly is penalised
    # Without a source (no synthesis) the target is the image itself: the paper's training.
    assert float(model.training_step({**batch, "source": None}, 0)) < 1e-10


def test_the_autoencoder_reference_cancels_the_autoencoders_own_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """Compared with the autoencoder's own reconstruction, the map shows only what the denoiser changed;
    compared with the input it also shows the (untrained) autoencoder's error."""
    images = Images().images[:2]

    def changed(image: torch.Tensor, z0: torch.Tensor, categories: Any = None) -> torch.Tensor:
        z = z0.clone()
        z[:, :, 2:4, 2:4] += 3.0
        return z

    maps: dict[tuple[str, str], torch.Tensor] = {}
    for reference in ("input", "autoencoder"):
        model = ready(tiny(latent=ae(reference=reference))).eval()
        for name, denoise in (("kept", lambda image, z0, categories=None: z0), ("changed", changed)):
            monkeypatch.setattr(model, "denoise", denoise)
            maps[reference, name] = model(images)[0]
    assert float(maps["autoencoder", "kept"].abs().max()) < 1e-5  # the autoencoder's error cancels...
    assert float(maps["input", "kept"].mean()) > 1e-3  # ...which the paper's reference scores everywhere
    assert float(maps["autoencoder", "changed"].mean()) > 1e-3  # what the denoiser changes is scored
    with pytest.raises(DiffusionConfigError, match="model.latent.reference=pixels.*'input', 'autoencoder'"):
        tiny(latent=ae(reference="pixels"))


def test_t_train_max_bounds_the_training_timesteps_and_must_exceed_t_start(monkeypatch: pytest.MonkeyPatch) -> None:
    import anomaly.models.diad as diad

    model = ready(tiny(t_start=100, t_train_max=300, ema=False))
    steps: list[torch.Tensor] = []
    monkeypatch.setattr(diad, "q_sample", lambda s, z, t, n: steps.append(t) or s.add_noise(z, n, t))
    batch = {"image": Images().images.repeat(8, 1, 1, 1), "label": torch.zeros(64), "category": ["a"] * 64}
    model.training_step(batch, 0)
    assert int(steps[-1].max()) < 300 and int(steps[-1].max()) > 150
    with pytest.raises(DiffusionConfigError, match=r"model.t_train_max=100 must lie in \(model.t_start=100, 1000\]"):
        tiny(t_start=100, t_train_max=100)


def features_model(**overrides: Any) -> DiAD:
    return tiny(latent=features(downsampling=4, decoder_width=16, decoder_lr=1e-2),
                scheduler={"prediction_type": "sample"}, scoring={"sigma": 1.0, "pool_size": 4, "resize": 64},
                **overrides)


def test_the_feature_latent_scores_feature_changes_where_the_denoiser_made_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = features_model(ema=False)
    assert isinstance(model.latent, FeatureLatent) and model.denoiser.unet.config.in_channels == 64
    images = Images().images
    decoder = [p.detach().clone() for p in model.latent.decoder.parameters()]
    trainer(tmp_path, 4).fit(model, datamodule=Data())
    assert model.latent.grid.fitted  # statistics from the first batch
    changed_weights = [not torch.equal(a, b) for a, b in zip(decoder, model.latent.decoder.parameters(), strict=True)]
    assert all(changed_weights)  # the viewing decoder trains beside the denoiser
    assert model.restore_overrides()["latent"] == {}  # nothing to rebuild but the backbone, already there
    model.eval()
    monkeypatch.setattr(model, "denoise", lambda image, z0, categories=None: z0)
    out = model.score_batch({"image": images[:2], "category": ["a", "a"]})
    assert float(out.anomaly_map.abs().max()) < 1e-4 and out.reconstruction.shape == (2, 3, 32, 32)

    def changed(image: torch.Tensor, z0: torch.Tensor, categories: Any = None) -> torch.Tensor:
        z = z0.clone()
        z[:, :, 1:3, 5:7] = torch.randn_like(z[:, :, 1:3, 5:7]) * 3  # latent cells ↔ pixels 4:12, 20:28
        return z

    monkeypatch.setattr(model, "denoise", changed)
    maps, _ = model(images[:2])
    inside, outside = maps[:, :, 4:12, 20:28].mean(), maps[:, :, 20:, :12].mean()
    assert float(inside) > 5 * float(outside)


def test_calibration_z_scores_maps_against_the_categorys_normal_maps(monkeypatch: pytest.MonkeyPatch) -> None:
    """A hot spot every normal map has (say the image border) vanishes; a new one stands out."""
    model = features_model(calibrate=True).eval()
    g = torch.Generator().manual_seed(0)
    usual = torch.zeros(1, 32, 32)
    usual[..., :4, :] = 5.0  # the denoiser's error on every normal image of category a
    maps = {"a": lambda n: usual + 0.1 * torch.rand(n, 1, 32, 32, generator=g),
            "b": lambda n: 0.1 * torch.rand(n, 1, 32, 32, generator=g)}
    current: dict[str, Any] = {}

    def distances(image: torch.Tensor, categories: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
        raw = current.get("map")
        return (torch.cat([maps[c](1) for c in categories]) if raw is None else raw), image

    monkeypatch.setattr(model, "distances", distances)
    images = Images().images
    batch = {"image": images[:2], "category": ["a", "b"], "path": ["0.png", "1.png"]}
    batches = [{"image": images[:4], "category": ["a", "b", "a", "b"]} for _ in range(10)]
    model.fit_calibration(batches)
    normal = model.evaluate_batch(batch)
    assert float(normal.anomaly_map[:, :, :4].abs().mean()) < 2.0  # the usual error is within its spread
    uncalibrated = model.score_batch(batch)
    assert float(uncalibrated.anomaly_map[0, :, :4].mean()) > 4.0  # ...which it is not before calibration
    defect = maps["a"](1)
    defect[..., 20:24, 20:24] += 1.0
    current["map"] = defect
    anomalous = model.evaluate_batch({**batch, "image": images[:1], "category": ["a"], "path": ["2.png"]})
    assert float(anomalous.anomaly_map[0, 0, 20:24, 20:24].mean()) > 5 * float(anomalous.anomaly_map[0, 0, :4].abs().mean())
    assert float(anomalous.score[0]) > float(normal.score.max())


def test_each_parameter_group_is_clipped_on_its_own() -> None:
    """The viewing decoder's large gradients must not shrink the denoiser's."""
    model = features_model()
    optimizer = model.configure_optimizers()
    optimizer = optimizer["optimizer"] if isinstance(optimizer, dict) else optimizer
    denoiser, decoder = (group["params"] for group in optimizer.param_groups)
    for p in denoiser:
        p.grad = torch.full_like(p, 1e-4)
    for p in decoder:
        p.grad = torch.full_like(p, 10.0)
    before = [p.grad.clone() for p in denoiser]
    model.configure_gradient_clipping(optimizer, gradient_clip_val=1.0, gradient_clip_algorithm="norm")
    assert all(torch.equal(p.grad, b) for p, b in zip(denoiser, before, strict=True))
    assert float(torch.cat([p.grad.flatten() for p in decoder]).norm()) == pytest.approx(1.0, rel=1e-4)


def test_feature_latent_sizes_and_scoring_layers_fail_with_one_clear_sentence() -> None:
    with pytest.raises(DiffusionConfigError, match="model.latent.downsampling=3 is not supported"):
        tiny(latent=features(downsampling=3))
    with pytest.raises(DiffusionConfigError, match="multiples of 32"):
        tiny(latent=features(downsampling=8), input_size=48)
    with pytest.raises(DiffusionConfigError, match=r"model.scoring.layers has \['blocks.2'\].*model.latent.layers"):
        tiny(latent=features(layers=["blocks.1"]), scoring={"layers": ["blocks.1", "blocks.2"]})
