"""FlowDetector (model=differnet | model=cdflow): learns, scores with maps, checkpoints, refuses bad options."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from anomaly.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from anomaly.models.flow import FlowDetector
from anomaly.models.guards import NonFiniteLossError
from anomaly.nn.backbone import FeatureExtractor
from anomaly.nn.flows import ClampError, FlowInputError

pytestmark = pytest.mark.one_thread

BACKBONE = {"_target_": "anomaly.nn.backbone.FeatureExtractor", "name": "efficientnet_lite0",
            "layers": ["blocks.2"], "weights": "none"}


def tiny(kind: str = "dense", **options) -> FlowDetector:
    torch.manual_seed(0)
    settings = {"kind": kind, "n_blocks": 2 if kind == "dense" else 3, "hidden": [32], "depth": 2,
                "scales": [32, 16], "n_views": 3, "train_views": 2, "lr": 1e-3, "sigma": 1.0, **options}
    return FlowDetector(BACKBONE, **settings)


class Images(Dataset):
    def __init__(self, n: int = 8, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.images = torch.randn(n, 3, 32, 32, generator=generator) * 0.3

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "label": 0, "category": "toy", "path": f"{i}.png"}


def train_steps(model: FlowDetector, batch: dict, steps: int) -> list[float]:
    """The training losses of ``steps`` optimizer steps on one batch, outside a Trainer."""
    optimizer = model.configure_optimizers()
    losses = []
    for step in range(steps):
        loss = model.training_step(batch, step)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses


@pytest.mark.parametrize("kind", ["plain", "dense"])
def test_nll_decreases_in_a_short_run(kind: str) -> None:
    losses = train_steps(tiny(kind), next(iter(DataLoader(Images(8), batch_size=8))), 40)
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.1, losses[::8]


def test_scores_and_maps_have_the_contract_shapes_are_finite_and_deterministic() -> None:
    model = tiny().eval()
    images = Images(3).images
    with torch.inference_mode():  # as Lightning's test loop runs: the map still gets its gradient
        anomaly_map, score = model(images)
        again_map, again = model(images)
    assert anomaly_map.shape == (3, 1, 32, 32) and score.shape == (3,)
    assert torch.isfinite(anomaly_map).all() and torch.isfinite(score).all()
    assert (anomaly_map > 0).any() and anomaly_map.min() >= 0
    assert torch.equal(score, again) and torch.equal(anomaly_map, again_map)
    # The score is the mean −log p (per dimension) over the views.
    with torch.no_grad():
        views = torch.stack([model.model.nll(model.model.view(images, k)) for k in range(3)]).mean(0)
    assert torch.allclose(score, views, atol=1e-5)


def test_the_map_is_the_smoothed_input_gradient_of_the_score() -> None:
    model = tiny(sigma=0.0, n_views=1).eval()
    image = Images(1).images.requires_grad_(True)
    model.model.nll(image).sum().backward()
    anomaly_map, _ = model(image.detach())
    assert torch.allclose(anomaly_map, image.grad.abs().sum(1, keepdim=True), atol=1e-6)


def test_load_from_checkpoint_reproduces_scores_without_reading_pretrained_weights(tmp_path: Path) -> None:
    model = FlowDetector({**BACKBONE, "weights": "offline"}, kind="dense", n_blocks=2, hidden=[32], depth=2,
                         scales=[32, 16], n_views=2, lr=1e-3)
    trainer = L.Trainer(max_steps=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu", devices=1)
    trainer.fit(model, train_dataloaders=DataLoader(Images(8), batch_size=4))
    path = tmp_path / "flow.ckpt"
    trainer.save_checkpoint(path)
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    assert checkpoint["hyper_parameters"]["backbone"]["weights"] == "none"
    images = Images(2, seed=1).images
    model.eval()
    loaded = FlowDetector.load_from_checkpoint(path, weights_only=True).eval()
    assert isinstance(loaded.model.backbone, FeatureExtractor)
    expected_map, expected = model(images)
    got_map, got = loaded(images)
    assert torch.allclose(got, expected, atol=1e-6) and torch.allclose(got_map, expected_map, atol=1e-6)


@pytest.mark.parametrize("alpha", [0.0, -2.0])
def test_a_non_positive_clamp_is_one_sentence(alpha: float) -> None:
    with pytest.raises(ClampError, match=r"^model\.clamp=\S+ must be a positive number \(.*\)\.$"):
        tiny(clamp=alpha)


def test_features_of_another_size_than_the_flow_was_built_for_are_refused() -> None:
    model = tiny()
    dim = model.model.flow.dim
    assert dim == 2 * 40  # blocks.2 has 40 channels, two scales
    with pytest.raises(FlowInputError, match=rf"^The flow was built for {dim}-dim features but got shape \(2, 120\);"):
        model.model.flow(torch.randn(2, 120))
    other = tiny(scales=[32, 16, 8])  # a checkpoint of one cannot be loaded into the other
    with pytest.raises(RuntimeError, match="size mismatch"):
        other.load_state_dict(model.state_dict())


def test_zero_views_is_one_sentence() -> None:
    with pytest.raises(FlowInputError, match=r"^model\.n_views=0 must be at least 1"):
        tiny(n_views=0)


def test_a_nan_loss_stops_with_the_shared_guard() -> None:
    model = tiny()
    with pytest.raises(NonFiniteLossError, match="FlowDetector's training loss became nan"):
        model.on_before_backward(torch.tensor(float("nan")))


def test_a_cosine_schedule_takes_the_learning_rate_to_zero_by_the_last_step() -> None:
    with pytest.raises(FlowInputError, match=r"model.lr_schedule='step' is unknown"):
        tiny(lr_schedule="step")
    model = tiny(lr_schedule="cosine", train_views=1)
    trainer = L.Trainer(max_steps=4, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu", devices=1)
    trainer.fit(model, train_dataloaders=DataLoader(Images(8), batch_size=4))
    schedule = trainer.lr_scheduler_configs[0].scheduler
    assert schedule.last_epoch == 4 and schedule.get_last_lr()[0] == 0.0
    assert not isinstance(tiny().configure_optimizers(), dict)  # constant (the paper): a bare Adam


def test_the_feature_cache_runs_the_backbone_once_per_image_and_trains_as_without_it() -> None:
    batch = next(iter(DataLoader(Images(8), batch_size=8)))
    cached, plain = tiny(rotation=0.0, feature_cache=16), tiny(rotation=0.0, feature_cache=0)
    calls = []
    embed = cached.model.embed
    cached.model.embed = lambda images: calls.append(len(images)) or embed(images)
    with_cache, without = train_steps(cached, batch, 3), train_steps(plain, batch, 3)
    assert calls == [16]  # 8 images × 2 train views once; then every step from the cache
    assert with_cache == pytest.approx(without, abs=1e-6) and with_cache[2] < with_cache[0]
    rotating = tiny(rotation=90.0, feature_cache=16)
    rotating.training_step(batch, 0)
    assert len(rotating.feature_cache) == 0  # random rotations: features differ every step, no cache


@pytest.mark.parametrize("score", ["z2", "neg_log_pz", "nll"])
def test_the_score_is_computed_from_z_as_named(score: str) -> None:
    """model.score against an independent computation from the latent z (and, for nll, autograd's Jacobian)."""
    model = tiny(score=score, n_views=2, view_rotation=30.0).eval()
    density = model.model
    images = Images(2).images
    with torch.no_grad():
        _, got = model(images)
    expected = torch.zeros(2, dtype=torch.float64)
    flow = copy.deepcopy(density.flow).double()
    for k in range(2):
        features = density.embed(density.view(images, k)).detach().double()
        z = flow(features)[0]
        dim = z.shape[1]
        if score == "z2":  # DifferNet's train.py: torch.mean(z ** 2) over the features
            value = (z**2).mean(1)
        elif score == "neg_log_pz":  # −log N(z; 0, I) without the constant, per dimension
            value = -torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(1) / dim - 0.5 * math.log(2 * math.pi)
        else:
            log_det = torch.stack([torch.linalg.slogdet(torch.autograd.functional.jacobian(
                lambda v: flow(v[None])[0][0], f))[1] for f in features])
            value = (0.5 * (z**2).sum(1) - log_det) / dim
        expected += value / 2
    assert torch.allclose(got.double(), expected, rtol=1e-4, atol=1e-5), (got, expected)
    if score != "nll":  # without the log-determinant, which moves the score by far more than the tolerance
        density.score = "nll"
        with torch.no_grad():
            assert (density.score_views(images) - got).abs().min() > 1e-2


def test_an_unknown_score_is_one_sentence() -> None:
    with pytest.raises(FlowInputError, match=r"^model\.score='loglik' is unknown; choose one of .*\)\.$"):
        tiny(score="loglik")


def test_a_batch_of_only_real_anomalies_skips_its_step_and_the_run_goes_on() -> None:
    """Few-shot real anomalies are not normal images: a batch made only of them has nothing to learn from."""
    class Mixed(Images):
        def __getitem__(self, i: int) -> dict:
            return {**super().__getitem__(i), "defect": "good" if i < 4 else "crack", "label": int(i >= 4)}

    model = tiny(train_views=1)
    real_only = list(DataLoader(Mixed(8), batch_size=4))[1]  # unshuffled: the second batch is all real
    assert real_only["defect"] == ["crack"] * 4
    loss = model.training_step(real_only, 0)
    assert loss is None or bool(torch.isfinite(loss))  # skipped, or a finite loss: never NaN
    trainer = L.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu", devices=1, log_every_n_steps=1)
    trainer.fit(model, train_dataloaders=DataLoader(Mixed(8), batch_size=4))
    first = next(model.model.flow.parameters())
    assert int(trainer.optimizers[0].state[first]["step"]) == 2  # one Adam step per epoch: the normal batch's
    assert torch.isfinite(trainer.callback_metrics["train/nll"])


def test_rotations_pad_with_the_mean_or_black_and_scales_shrink_bilinear_or_nearest() -> None:
    ours, differnet = tiny(), tiny(rotation_fill="black", scale_mode="nearest")
    flat = torch.zeros(1, 3, 32, 32)  # the data mean everywhere, normalised
    corner = (..., 0, 0)
    assert torch.equal(ours.model.rotate(flat, torch.tensor([45.0]))[corner], torch.zeros(1, 3))
    black = -torch.tensor(IMAGENET_MEAN) / torch.tensor(IMAGENET_STD)
    assert torch.allclose(differnet.model.rotate(flat, torch.tensor([45.0]))[corner], black[None])
    assert torch.equal(differnet.model.rotate(flat, torch.tensor([45.0]))[..., 16, 16], flat[..., 16, 16])
    image = Images(1).images
    assert torch.equal(differnet.model.resize(image, 16), image[..., ::2, ::2])  # DifferNet's F.interpolate
    assert torch.allclose(ours.model.resize(image, 16), torch.nn.functional.interpolate(
        image, size=(16, 16), mode="bilinear", antialias=True))
    with pytest.raises(FlowInputError, match=r"^model\.scale_mode=bicubic / model\.rotation_fill=mean is unknown;"):
        tiny(scale_mode="bicubic")
