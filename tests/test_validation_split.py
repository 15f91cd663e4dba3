"""The validation split: disjoint from train and test, deterministic by seed, recorded, per category."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from anomaly.data.datamodule import AnomalyDataModule
from anomaly.data.errors import DataError
from anomaly.data.layouts import MVTecLayout
from anomaly.synthesis.perlin import PerlinSynthesis
from anomaly.synthesis.textures import ProceduralTextures


def module(root: Path, val: str, seed: int = 0, **options: Any) -> AnomalyDataModule:
    synthesis = PerlinSynthesis(texture=ProceduralTextures(), foreground=None) if val == "synthetic" else None
    return AnomalyDataModule(root, MVTecLayout(), category=options.pop("category", "all"), image_size=32,
                             val=val, val_fraction=0.25, val_seed=seed, val_synthesis=synthesis, **options)


def paths(dataset: Any) -> list[str]:
    """The image files of a dataset (or of every part of a ConcatDataset)."""
    parts = getattr(dataset, "datasets", [dataset])
    return [str(record.image) for part in parts for record in part.records]


def test_synthetic_validation_holds_out_normal_training_images_only(synthetic_root: Path) -> None:
    dm = module(synthetic_root, "synthetic")
    train, val, test = (paths(dm.dataset(split)) for split in ("train", "val", "test"))
    everything = {str(r.image) for r in dm.records("train")}
    assert set(val) and not set(val) & set(train) and set(val) | set(train) == everything
    assert set(test) == {str(r.image) for r in dm.records("test")}  # no test image is touched
    assert not set(val) & set(test)
    # Each held-out image appears twice: as it is (normal) and with a synthetic anomaly (mask, label 1).
    data = dm.dataset("val")
    assert len(data) == 2 * len(set(val))
    items = [data[i] for i in range(len(data))]
    labels = [int(item["label"]) for item in items]
    assert labels == [0] * len(set(val)) + [1] * len(set(val))
    assert all(float(item["mask"].sum()) > 0 for item in items if int(item["label"]) == 1)
    again = dm.dataset("val")  # the same anomalies every epoch
    assert all(torch.equal(again[i]["image"], items[i]["image"]) for i in range(len(items)))
    for category in dm.categories:  # every category keeps training and validation images
        assert any(f"/{category}/" in p for p in val) and any(f"/{category}/" in p for p in train)


def test_the_split_is_deterministic_by_seed_and_the_same_in_both_settings(synthetic_root: Path) -> None:
    first, again, other = (module(synthetic_root, "synthetic", seed).held_out() for seed in (0, 0, 1))
    assert first == again and first != other
    unified = module(synthetic_root, "synthetic", setting="unified")
    for category in unified.categories:
        alone = module(synthetic_root, "synthetic", category=category).held_out()
        assert alone == {r for r in unified.held_out() if r.category == category}


def test_from_test_moves_exactly_the_recorded_images_out_of_the_test_set(synthetic_root: Path) -> None:
    dm = module(synthetic_root, "from_test")
    val, test = paths(dm.dataset("val")), paths(dm.dataset("test"))
    everything = {str(r.image) for r in dm.records("test")}
    assert not set(val) & set(test) and set(val) | set(test) == everything
    listed = dm.validation_listing()
    assert sorted(entry["image"] for entry in listed) == sorted(val)
    assert {entry["from"] for entry in listed} == {"test"}
    for category in dm.categories:  # both classes of every category are validated on
        labels = {entry["label"] for entry in listed if entry["category"] == category}
        assert labels == {0, 1}
    assert paths(dm.dataset("train")) == [str(r.image) for r in dm.records("train") if r.label == 0]


def test_no_validation_leaves_every_split_whole_and_bad_options_fail_clearly(synthetic_root: Path) -> None:
    dm = module(synthetic_root, "none")
    assert dm.val_dataloader() == [] and dm.validation_listing() == []
    assert len(dm.dataset("test")) == len(dm.records("test"))
    with pytest.raises(DataError, match="data.val=holdout is not valid"):
        module(synthetic_root, "holdout")
    with pytest.raises(DataError, match=r"data.val_fraction=1.0 must lie strictly between 0 and 1"):
        AnomalyDataModule(synthetic_root, MVTecLayout(), val="from_test", val_fraction=1.0)
