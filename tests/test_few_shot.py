"""data.few_shot_anomalies: k real test anomalies per category move to training, never evaluated, listed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader

from anomaly.data.datamodule import AnomalyDataModule
from anomaly.data.errors import DataError
from anomaly.data.few_shot import is_real_anomaly
from anomaly.data.layouts import MVTecLayout
from anomaly.engine.run import _record_splits
from anomaly.synthesis.cutpaste import CutPaste

CATEGORIES = ["capsule", "washer"]


def module(root: Path, k: int, **options: Any) -> AnomalyDataModule:
    return AnomalyDataModule(root, MVTecLayout(), category=options.pop("category", CATEGORIES), image_size=32,
                             few_shot_anomalies=k, **options)


def paths(dataset: Any) -> list[str]:
    parts = getattr(dataset, "datasets", [dataset])
    return [str(record.image) for part in parts for record in part.records]


def test_few_shot_images_leave_the_test_set_and_join_training_as_real_anomalies(synthetic_root: Path) -> None:
    dm = module(synthetic_root, 2, val="from_test", val_fraction=0.25)
    shots = dm.few_shot()
    assert len(shots) == 4 and all(r.label == 1 for r in shots)
    for category in CATEGORIES:  # two per category, of two different defect types
        mine = [r for r in shots if r.category == category]
        assert len(mine) == 2 and len({r.defect for r in mine}) == 2
    shot_paths = {str(r.image) for r in shots}
    evaluated = set(paths(dm.dataset("test"))) | set(paths(dm.dataset("val")))
    assert not shot_paths & evaluated
    # Everything else of the test set is still evaluated (test or from_test validation).
    assert evaluated | shot_paths == {str(r.image) for r in dm.records("test")}
    train = dm.dataset("train")
    assert shot_paths <= set(paths(train))
    batch = next(iter(DataLoader(train, batch_size=len(train))))
    real = is_real_anomaly(batch)
    assert {p for p, r in zip(batch["path"], real.tolist(), strict=True) if r} == shot_paths
    assert bool((batch["label"][real] == 1).all()) and float(batch["mask"][real].sum()) > 0
    assert bool((batch["label"][~real] == 0).all())


def test_the_draw_is_seeded_per_category_and_off_by_default(synthetic_root: Path) -> None:
    first = [r.image for r in module(synthetic_root, 2).few_shot()]
    assert first == [r.image for r in module(synthetic_root, 2).few_shot()]
    assert first != [r.image for r in module(synthetic_root, 2, few_shot_seed=1).few_shot()]
    # The separate setting's per-category module takes the same images as the joint one.
    alone = module(synthetic_root, 2).for_category("washer").few_shot()
    assert [r.image for r in alone] == [p for p in first if "washer" in str(p)]
    off = module(synthetic_root, 0)
    assert off.few_shot() == [] and off.few_shot_listing() == []
    assert len(paths(off.dataset("test"))) == len(off.records("test"))


def test_under_synthesis_few_shot_samples_carry_the_training_keys(synthetic_root: Path) -> None:
    dm = module(synthetic_root, 1, category="washer", synthesis=CutPaste(normal_probability=0.0))
    batch = next(iter(DataLoader(dm.dataset("train"), batch_size=64)))
    real = is_real_anomaly(batch)
    assert int(real.sum()) == 1 and batch["source"].shape == batch["image"].shape
    assert torch.equal(batch["source"][real], batch["image"][real])  # no synthesis on a real anomaly


def test_more_few_shot_images_than_a_category_has_says_how_many_exist(synthetic_root: Path) -> None:
    available = sum(r.label for r in module(synthetic_root, 0, category="washer").records("test"))
    with pytest.raises(DataError, match=rf"more than category washer's {available} anomalous test images"):
        module(synthetic_root, available + 1, category="washer").few_shot()
    with pytest.raises(DataError, match="few_shot_anomalies=-1"):
        module(synthetic_root, -1)


def test_the_run_folder_lists_every_category_s_images(synthetic_root: Path, tmp_path: Path) -> None:
    dm = module(synthetic_root, 2)
    assert "few_shot.json" in _record_splits(dm, tmp_path)  # what the engine records before fitting
    written = json.loads((tmp_path / "few_shot.json").read_text())
    assert sorted(e["image"] for e in written) == sorted(str(r.image) for r in dm.few_shot())
    assert all(e["defect"] != "good" and e["from"] == "test" for e in written)


def test_the_defect_type_mode_takes_whole_defect_types_and_keeps_one_in_the_test_set(synthetic_root: Path) -> None:
    """data.few_shot_mode=defect_types: the dense flow paper's few-shot setting (every image of k defect types)."""
    dm = module(synthetic_root, 1, few_shot_mode="defect_types")
    shots = dm.few_shot()
    for category in CATEGORIES:
        anomalies = [r for r in dm.records("test") if r.category == category and r.label == 1]
        types = {r.defect for r in anomalies}
        mine = [r for r in shots if r.category == category]
        assert len({r.defect for r in mine}) == 1 and len(types) >= 2
        assert set(mine) == {r for r in anomalies if r.defect == mine[0].defect}  # the whole defect type
    every = module(synthetic_root, 99, few_shot_mode="defect_types")  # at most all types but one
    test = every.dataset("test")
    for category in CATEGORIES:
        left = {r.defect for r in test.records if r.category == category and r.label == 1}
        assert len(left) == 1
    with pytest.raises(DataError, match=r"^data\.few_shot_mode=types is unknown; choose one of"):
        module(synthetic_root, 1, few_shot_mode="types")


def test_a_pretrained_extractor_that_saw_other_real_anomalies_is_refused(synthetic_root: Path) -> None:
    from anomaly.data.few_shot import FewShotMismatchError, check_same_few_shot

    saved = module(synthetic_root, 2).few_shot_listing()  # what the pre-training's checkpoint records
    check_same_few_shot(saved, module(synthetic_root, 2).few_shot_listing(), CATEGORIES, "model.pretrained=x")
    washer = module(synthetic_root, 2, category="washer").for_category("washer").few_shot_listing()
    check_same_few_shot(saved, washer, ["washer"], "model.pretrained=x")  # one category of a joint pre-training
    for other in ({"few_shot_seed": 1}, {"k": 0}, {"k": 1}):
        k = other.pop("k", 2)
        listing = module(synthetic_root, k, **other).few_shot_listing()
        with pytest.raises(FewShotMismatchError, match=r"^model\.pretrained=x was pre-trained on 4 real anomalies "
                           r"\(capsule/.*\) but this run holds out \d+ different ones, .*few_shot\.json lists them\)\.$"):
            check_same_few_shot(saved, listing, CATEGORIES, "model.pretrained=x")
