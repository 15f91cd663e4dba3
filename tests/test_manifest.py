"""The run manifest's data set fingerprint: stable for the same files, changed by any data file change."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra

from anomaly.engine.build import build_datamodule
from anomaly.engine.manifest import data_record, fingerprint


def record_of(root: Path) -> dict:
    GlobalHydra.instance().clear()
    with initialize_config_module("anomaly.conf", version_base="1.3"):
        cfg = compose("train", overrides=[f"data.root={root}", "data.category=capsule", "data.prepare=null",
                                          "data.val=synthetic"])
    return data_record(build_datamodule(cfg))


@pytest.fixture
def data_copy(synthetic_root: Path, tmp_path: Path) -> Path:
    shutil.copytree(synthetic_root / "capsule", tmp_path / "data" / "capsule")
    return tmp_path / "data"


def test_fingerprint_is_stable_and_changes_with_any_data_file(data_copy: Path) -> None:
    first = record_of(data_copy)
    files = [p for p in data_copy.rglob("*") if p.is_file()]
    assert first["fingerprint"]["files"] == len(files)  # every image and mask the run reads
    sizes = first["split_sizes"]["capsule"]
    assert sizes["val"] > 0 and sizes["train"] + sizes["val"] == len(list((data_copy / "capsule/train/good").iterdir()))
    assert record_of(data_copy)["fingerprint"] == first["fingerprint"]  # same files, same fingerprint

    image = sorted((data_copy / "capsule" / "test").rglob("*.png"))[0]
    with image.open("ab") as handle:  # one data file changes
        handle.write(b"\0")
    changed = record_of(data_copy)["fingerprint"]
    assert changed["files"] == first["fingerprint"]["files"] and changed["sha256"] != first["fingerprint"]["sha256"]

    sorted((data_copy / "capsule" / "train" / "good").glob("*.png"))[-1].unlink()  # one training image fewer
    fewer = record_of(data_copy)["fingerprint"]
    assert fewer["files"] == first["fingerprint"]["files"] - 1


def test_fingerprint_sees_a_renamed_file_of_the_same_size(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(b"12345")
    before = fingerprint([tmp_path / "a.png"], tmp_path)
    (tmp_path / "a.png").rename(tmp_path / "b.png")
    after = fingerprint([tmp_path / "b.png"], tmp_path)
    assert before["files"] == after["files"] == 1 and before["sha256"] != after["sha256"]
