"""The embedded synthetic data set: determinism, MVTec layout, exact masks, atomic caching."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from anomaly.data.errors import DataError
from anomaly.data.image_io import read_image, read_mask
from anomaly.data.layouts import MVTecLayout
from anomaly.data.synthetic import (
    STAMP,
    categories,
    defect_types,
    ensure_synthetic,
    generate,
    render_sample,
)
from anomaly.data.synthetic import cache as cache_module

TINY = {"image_size": 48, "n_train": 2, "n_test_good": 1, "n_test_defect_per_type": 1}


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*.png"))}


def test_categories_cover_textures_objects_and_defect_kinds() -> None:
    assert {"fabric", "wood", "washer", "capsule"} <= set(categories())
    kinds = {d for c in categories() for d in defect_types(c)}
    assert {"scratch", "crack", "hole", "stain", "contamination", "deformation"} <= kinds
    assert all(len(defect_types(c)) >= 3 for c in categories())


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    first = tree_bytes(generate(tmp_path / "a", ["washer", "fabric"], seed=3, workers=1, **TINY))
    again = tree_bytes(generate(tmp_path / "b", ["washer", "fabric"], seed=3, workers=2, **TINY))
    other = tree_bytes(generate(tmp_path / "c", ["washer", "fabric"], seed=4, **TINY))
    assert first == again
    assert first.keys() == other.keys()
    images = [k for k in first if "ground_truth" not in k]
    assert all(first[k] != other[k] for k in images)
    # A sample does not depend on which other categories are generated.
    alone = tree_bytes(generate(tmp_path / "d", ["fabric"], seed=3, **TINY))
    assert alone == {k: v for k, v in first.items() if k.startswith("fabric/")}


def test_generated_set_is_a_valid_mvtec_layout(tmp_path: Path) -> None:
    root = generate(tmp_path / "synthetic", image_size=40, n_train=3, n_test_good=2, n_test_defect_per_type=2)
    layout = MVTecLayout()
    assert layout.categories(root) == categories()
    for category in categories():
        train = layout.records(root, category, "train")
        assert len(train) == 3 and all(r.label == 0 and r.mask is None for r in train)
        test = layout.records(root, category, "test")
        assert sum(r.label == 0 for r in test) == 2
        bad = [r for r in test if r.label == 1]
        assert sorted({r.defect for r in bad}) == defect_types(category)
        assert len(bad) == 2 * len(defect_types(category))
        for record in bad:
            image = read_image(record.image)
            assert image.shape == (40, 40, 3)
            mask = read_mask(record.mask, image.shape[:2], record.image)
            assert mask.any() and set(np.unique(mask)) <= {0, 1}
            raw = np.unique(np.asarray(read_image(record.mask)))
            assert set(raw.tolist()) <= {0, 255}


@pytest.mark.parametrize("category", ["fabric", "wood", "washer", "capsule"])
def test_mask_is_exactly_the_changed_pixels(category: str) -> None:
    for defect in defect_types(category):
        for index in range(2):
            sample = render_sample(category, f"test/{defect}", index, seed=1, image_size=64)
            changed = (sample.image != sample.base).any(axis=2)
            assert sample.mask.dtype == np.uint8 and sample.mask.any()
            assert np.array_equal(changed, sample.mask.astype(bool)), (category, defect, index)
            # The defect-free base is the good render of the same scene: the picture outside the mask.
            assert np.array_equal(sample.image[~changed], sample.base[~changed])
            assert sample.mask.mean() < 0.2
    good = render_sample(category, "test/good", 0, seed=1, image_size=64)
    assert np.array_equal(good.image, good.base) and not good.mask.any()


def test_written_files_match_the_rendered_samples(tmp_path: Path) -> None:
    root = generate(tmp_path / "s", ["capsule"], seed=2, **TINY)
    for defect in defect_types("capsule"):
        sample = render_sample("capsule", f"test/{defect}", 0, seed=2, image_size=TINY["image_size"])
        assert np.array_equal(read_image(root / "capsule" / "test" / defect / "000.png"), sample.image)
        mask = read_image(root / "capsule" / "ground_truth" / defect / "000_mask.png")[..., 0]
        assert np.array_equal(mask, sample.mask * 255)


def test_normal_images_vary() -> None:
    for category in categories():
        a, b = (render_sample(category, "train/good", i, image_size=64).image.astype(float) for i in (0, 1))
        assert np.abs(a - b).mean() > 3, category


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(
        DataError, match="data.category=bottle is not a synthetic category; available: capsule"
    ):
        generate(tmp_path, ["bottle"], **TINY)
    with pytest.raises(DataError, match="fabric has no defect crack"):
        render_sample("fabric", "test/crack", 0)
    with pytest.raises(DataError, match="Unknown synthetic data parameter"):
        ensure_synthetic(tmp_path / "x", size=64)


def test_cache_generates_once_and_regenerates_on_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "data" / "synthetic"
    params = dict(categories=["wood"], seed=0, **TINY)
    assert ensure_synthetic(root, **params) == root.absolute()
    stamp = json.loads((root / STAMP).read_text())
    assert (
        stamp["seed"] == 0 and stamp["categories"] == ["wood"] and stamp["image_size"] == TINY["image_size"]
    )
    first = tree_bytes(root)
    assert len(first) == 2 + 1 + 2 * len(defect_types("wood"))
    assert oct(root.stat().st_mode & 0o777) == "0o755"

    calls: list[Path] = []
    real_generate = cache_module.generate

    def spy(work: Path, **kwargs: object) -> Path:
        calls.append(work)
        assert json.loads((root / STAMP).read_text())["seed"] == 0  # the old set stays whole meanwhile
        return real_generate(work, **kwargs)

    monkeypatch.setattr(cache_module, "generate", spy)
    ensure_synthetic(root, **params)
    ensure_synthetic(root, **{**params, "workers": 1})  # threads do not change the data
    ensure_synthetic(root, **{**params, "categories": "wood"})  # the same choice, written as on the CLI
    assert calls == []
    ensure_synthetic(root, **{**params, "seed": 1})
    assert len(calls) == 1 and calls[0].parent == root.parent and calls[0].name.startswith(".synthetic.tmp-")
    assert json.loads((root / STAMP).read_text())["seed"] == 1
    assert tree_bytes(root).keys() == first.keys() and tree_bytes(root) != first
    assert sorted(p.name for p in root.parent.iterdir()) == ["synthetic"]


def test_killed_generation_leaves_no_partial_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "synthetic"
    ensure_synthetic(root, categories=["fabric"], **TINY)
    before = tree_bytes(root)
    real_generate = cache_module.generate

    def dies_half_way(work: Path, **kwargs: object) -> Path:
        real_generate(work, **{**kwargs, "categories": ["fabric"]})
        assert any(work.rglob("*.png")) and not (root / "washer").exists()
        raise KeyboardInterrupt  # killed after writing part of the new set

    monkeypatch.setattr(cache_module, "generate", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        ensure_synthetic(root, categories=["fabric", "washer"], **TINY)
    assert tree_bytes(root) == before and json.loads((root / STAMP).read_text())["categories"] == ["fabric"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["synthetic"]
    # A work folder left by a process that no longer exists (SIGKILL) is cleaned up on the next call.
    stale = tmp_path / ".synthetic.tmp-4999999-abc"
    (stale / "fabric").mkdir(parents=True)
    monkeypatch.setattr(cache_module, "generate", real_generate)
    ensure_synthetic(root, categories=["washer"], **TINY)
    assert not stale.exists() and (root / "washer").is_dir() and not (root / "fabric").exists()


def test_stamp_names_every_parameter() -> None:
    stamp = cache_module._parameters({"categories": "washer, fabric", "n_train": 5})
    assert stamp["categories"] == ["fabric", "washer"] and stamp["n_train"] == 5 and "workers" not in stamp
    assert cache_module._parameters({})["categories"] == categories()
    assert cache_module._parameters({}) == cache_module._parameters({"seed": 0, "image_size": 256})


def test_cache_refuses_a_foreign_folder(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("my data")
    with pytest.raises(DataError, match=r"data.root=.*mine exists and is not a synthetic data set"):
        ensure_synthetic(tmp_path / "mine", **TINY)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "my data"
