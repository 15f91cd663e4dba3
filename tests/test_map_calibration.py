"""MapCalibration: per-category per-pixel statistics of normal maps and z-scores against them."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from anomaly.models.base import AnomalyModule
from anomaly.nn.map_calibration import CalibrationError, MapCalibration


def test_statistics_do_not_depend_on_how_the_maps_were_batched_and_match_torch() -> None:
    maps = torch.rand(10, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    categories = ["a", "b"] * 5
    whole, split = MapCalibration(), MapCalibration()
    whole.add(categories, maps)
    for i in (3, 0, 7, 1, 9, 5, 2, 8, 6, 4):
        split.add(categories[i:i + 1], maps[i:i + 1])
    whole.finish()
    split.finish()
    for c, rows in (("a", maps[0::2]), ("b", maps[1::2])):
        torch.testing.assert_close(whole.statistics[c][0], split.statistics[c][0])
        torch.testing.assert_close(whole.statistics[c][0], rows.mean(0))
        std = rows.std(0)
        torch.testing.assert_close(whole.statistics[c][1], std + 1e-3 * std.mean(), rtol=1e-5, atol=1e-6)
    z = whole(maps[:2], ["a", "b"])
    torch.testing.assert_close(z[0], (maps[0] - maps[0::2].mean(0)) / whole.statistics["a"][1])
    assert whole.covers(["a", "b"]) and not whole.covers(["c"])


def test_too_few_images_or_unknown_categories_fail_naming_the_option() -> None:
    calibration = MapCalibration("model.calibrate")
    calibration.add(["a"], torch.zeros(1, 1, 4, 4))
    with pytest.raises(CalibrationError, match="model.calibrate=true needs at least 2 normal training images of 'a'"):
        calibration.finish()
    calibration.add(["a", "a"], torch.zeros(2, 1, 4, 4))
    calibration.finish()
    assert torch.isfinite(calibration(torch.ones(1, 1, 4, 4), ["a"])).all()  # no spread: the floor, not a NaN
    with pytest.raises(CalibrationError, match=r"no normal maps of \['b'\]"):
        calibration(torch.zeros(1, 1, 4, 4), ["b"])


class _Drifting(AnomalyModule):
    """Its maps are the image's first channel plus a learned offset: every optimizer step moves them."""

    def __init__(self) -> None:
        super().__init__(calibrate=True)
        self.offset = torch.nn.Parameter(torch.zeros(()))

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        anomaly_map = image[:, :1] + self.offset
        return anomaly_map, anomaly_map.flatten(1).amax(1)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return (self.offset - 10.0) ** 2  # pulls the offset (and every map) up each step

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


class _Batches(L.LightningDataModule):
    categories = ["a"]

    def _loader(self, labels: list[int]) -> DataLoader:
        g = torch.Generator().manual_seed(0)
        items = [{"image": torch.rand(3, 8, 8, generator=g), "mask": torch.zeros(1, 8, 8), "label": label,
                  "category": "a", "path": f"{i}.png"} for i, label in enumerate(labels)]
        return DataLoader(items, batch_size=4)

    def train_dataloader(self) -> DataLoader:
        return self._loader([0] * 8)

    def normal_train_dataloader(self) -> DataLoader:
        return self._loader([0] * 8)

    def val_dataloader(self) -> DataLoader:
        return self._loader([0, 1] * 4)


def test_each_validation_during_training_refits_the_calibration_on_the_current_weights(tmp_path) -> None:
    seen: list[tuple[int, float]] = []

    class Record(L.Callback):
        def on_validation_epoch_end(self, trainer: L.Trainer, module: _Drifting) -> None:
            if not trainer.sanity_checking:
                seen.append((module._calibrated_at, float(module.calibration.statistics["a"][0].mean())))

    model = _Drifting()
    L.Trainer(max_epochs=3, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, num_sanity_val_steps=0, callbacks=[Record()],
              default_root_dir=tmp_path).fit(model, datamodule=_Batches())
    steps, means = zip(*seen, strict=True)
    assert steps == (2, 4, 6)  # fitted again at every validation...
    assert means[0] < means[1] < means[2]  # ...on the weights of that moment
    offset = float(model.offset.detach())
    expected = float(torch.cat([b["image"][:, :1] for b in _Batches().normal_train_dataloader()]).mean()) + offset
    assert means[2] == pytest.approx(expected, abs=1e-5)
