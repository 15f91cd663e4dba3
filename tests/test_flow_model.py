"""FlowDetector (model=differnet | model=cdflow): learns, scores with maps, checkpoints, refuses bad options."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

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
