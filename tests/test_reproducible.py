"""trainer.deterministic=true: two runs of a gradient method (a tiny DifferNet) give identical metrics on CPU."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra

pytestmark = pytest.mark.one_thread

TINY_FLOW = ["experiment=differnet_cpu", "trainer.deterministic=true", "data.category=capsule", "data.image_size=64",
             "model.scales=[64]", "model.hidden=[32]", "model.n_blocks=2", "trainer.max_epochs=2",
             "trainer.check_val_every_n_epoch=1", "data.num_workers=0", "data.prepare=null",
             "callbacks.heatmaps.n_images=0", "logger=none"]


def train(root: Path, data: Path, folder: Path) -> dict:
    from anomaly.train import main

    GlobalHydra.instance().clear()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ANOMALY_ROOT", str(root))
        patch.setattr(sys, "argv", ["anomaly.train", *TINY_FLOW, f"data.root={data}", f"hydra.run.dir={folder}"])
        main()
    GlobalHydra.instance().clear()
    return json.loads((folder / "metrics.json").read_text())


def test_deterministic_runs_of_a_gradient_method_give_identical_metrics(synthetic_root: Path, tmp_path: Path) -> None:
    first = train(tmp_path, synthetic_root, tmp_path / "a")
    second = train(tmp_path, synthetic_root, tmp_path / "b")
    assert first["selected_on"].startswith("validation")  # trained and selected on validation, then tested
    assert first["categories"] == second["categories"]  # exactly, every metric
    assert first["validation"] == second["validation"]
    assert first["config"]["trainer"]["deterministic"] is True
