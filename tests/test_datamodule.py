"""The data module: batches follow the contract, settings, and every bad input fails clearly."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from anomaly.data.datamodule import AnomalyDataModule
from anomaly.data.errors import DataError
from anomaly.data.layouts import MVTecLayout
from anomaly.data.transforms import IMAGENET_MEAN, IMAGENET_STD, to_tensor


def copy_tree(root: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(root, target)
    return target


def test_batches_follow_the_contract(synthetic_root: Path) -> None:
    dm = AnomalyDataModule(synthetic_root, MVTecLayout(), category="all", image_size=64, crop_size=56,
                           batch_size=4, eval_batch_size=8)
    train = next(iter(dm.train_dataloader()))
    assert train["image"].shape == (4, 3, 56, 56) and train["image"].dtype == torch.float32
    assert train["mask"].shape == (4, 1, 56, 56) and int(train["label"].sum()) == 0
    test_batches = list(dm.test_dataloader())
    labels = torch.cat([b["label"] for b in test_batches])
    masks = torch.cat([b["mask"] for b in test_batches])
    assert set(masks.unique().tolist()) <= {0.0, 1.0}
    # An anomalous image has mask pixels (after a centre crop a defect near the border may be cut).
    has_pixels = masks.flatten(1).amax(1) > 0
    assert bool(has_pixels[labels == 1].float().mean() > 0.8) and not bool(has_pixels[labels == 0].any())
    assert {c for b in test_batches for c in b["category"]} == set(dm.categories)


def test_category_list_and_separate_copies(synthetic_root: Path) -> None:
    names = MVTecLayout().categories(synthetic_root)
    dm = AnomalyDataModule(synthetic_root, MVTecLayout(), category=names[:2], setting="unified")
    assert dm.categories == names[:2]
    one = dm.for_category(names[1])
    assert one.categories == [names[1]] and dm.categories == names[:2]
    assert {r.category for r in one.records("test")} == {names[1]}


def test_missing_root_names_the_option(tmp_path: Path) -> None:
    dm = AnomalyDataModule(tmp_path / "nope", MVTecLayout())
    with pytest.raises(DataError, match=r"data\.root=.*nope.*does not exist"):
        _ = dm.categories


def test_empty_root_names_the_option(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"data\.root=.*is empty"):
        _ = AnomalyDataModule(tmp_path, MVTecLayout()).categories


def test_unknown_category_lists_the_available_ones(synthetic_root: Path) -> None:
    names = MVTecLayout().categories(synthetic_root)
    with pytest.raises(DataError, match=r"data\.category=bottel is not in .*available: " + ", ".join(names)):
        _ = AnomalyDataModule(synthetic_root, MVTecLayout(), category="bottel").categories


def test_mask_of_another_size_is_caught_before_training(synthetic_root: Path, tmp_path: Path) -> None:
    root = copy_tree(synthetic_root, tmp_path)
    mask = next(root.glob("*/ground_truth/*/*_mask.png"))
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(mask)
    dm = AnomalyDataModule(root, MVTecLayout(), category=mask.parents[2].name)
    image = mask.parents[2] / "test" / mask.parent.name / mask.name.replace("_mask", "")
    assert image.is_file()
    with pytest.raises(DataError, match=rf"Mask {re.escape(str(mask))} is 12×10 but its image {re.escape(str(image))} "
                                        r"is 256×256; give each mask its image's size"):
        dm.setup("test")


def test_corrupt_image_is_named(synthetic_root: Path, tmp_path: Path) -> None:
    root = copy_tree(synthetic_root, tmp_path)
    image = next(root.glob("*/train/good/*.png"))
    image.write_bytes(b"not a png at all")
    dm = AnomalyDataModule(root, MVTecLayout(), category=image.parents[2].name)
    with pytest.raises(DataError, match=rf"^{re.escape(str(image))} is not a readable image .*replace or remove"):
        dm.setup("fit")


def test_test_image_without_mask_is_named(synthetic_root: Path, tmp_path: Path) -> None:
    root = copy_tree(synthetic_root, tmp_path)
    mask = next(root.glob("*/ground_truth/*/*_mask.png"))
    mask.unlink()
    image = mask.parents[2] / "test" / mask.parent.name / mask.name.replace("_mask", "")
    assert image.is_file()
    dm = AnomalyDataModule(root, MVTecLayout(), category=mask.parents[2].name)
    with pytest.raises(DataError, match=rf"^Test image {re.escape(str(image))} has no mask "
                                        rf"\(expected {re.escape(str(mask))}\)"):
        dm.setup("test")


def test_crop_larger_than_image_is_refused_before_any_data_is_read(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"data\.crop_size=80 is larger than data\.image_size=64"):
        AnomalyDataModule(tmp_path / "not_read", MVTecLayout(), image_size=64, crop_size=80)


def test_synthesised_training_images_carry_their_normal_source(synthetic_root: Path) -> None:
    from anomaly.synthesis import CutPaste

    plain = AnomalyDataModule(synthetic_root, MVTecLayout(), category="wood", image_size=64, batch_size=4)
    synthesised = AnomalyDataModule(synthetic_root, MVTecLayout(), category="wood", image_size=64, batch_size=4,
                                    synthesis=CutPaste(normal_probability=0.5))
    torch.manual_seed(0)  # the same shuffle for both loaders
    normal = next(iter(plain.train_dataloader()))
    assert "source" not in normal  # without a strategy the batch is unchanged
    torch.manual_seed(0)
    batch = next(iter(synthesised.train_dataloader()))
    torch.testing.assert_close(batch["source"], normal["image"])
    outside = (batch["mask"] == 0).expand_as(batch["image"])
    assert torch.equal(batch["image"][outside], batch["source"][outside])
    changed = (batch["image"] != batch["source"]).flatten(1).any(1)
    assert torch.equal(changed, batch["label"].bool()) and bool(changed.any())


def test_to_tensor_normalises_channels_first() -> None:
    image = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    expected = (image.astype(np.float32) / 255.0 - np.float32(IMAGENET_MEAN)) / np.float32(IMAGENET_STD)
    out = to_tensor(image)
    assert out.dtype == torch.float32 and out.shape == (3, 5, 7) and out.is_contiguous()
    assert np.array_equal(out.numpy(), expected.transpose(2, 0, 1))
