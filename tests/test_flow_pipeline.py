"""The flow through the engine: on a (contrastively) pre-trained extractor with few-shot anomalies held
out of evaluation; its checkpoint re-tests (python -m anomaly.evaluate) to the same metrics."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from anomaly.models.contrastive import ContrastiveBackbone

REPO = Path(__file__).resolve().parents[1]
BACKBONE = {"_target_": "anomaly.nn.backbone.FeatureExtractor", "name": "efficientnet_lite0",
            "layers": ["blocks.2"], "weights": "none"}
TINY = ["model=cdflow", "model.backbone.layers=[blocks.2]", "model.backbone.weights=none", "model.n_blocks=1",
        "model.hidden=[16]", "model.depth=1", "model.scales=[32]", "model.n_views=1", "model.train_views=1",
        "model.rotation=0", "data.image_size=32", "data.crop_size=null", "data.num_workers=0", "data.batch_size=16",
        "data.eval_batch_size=64", "data.prepare=null", "data.val=none", "trainer.max_epochs=1", "trainer.accelerator=cpu",
        "logger=none", "callbacks.heatmaps.n_images=0"]


def run(module: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "ANOMALY_ROOT": str(cwd), "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def flow_run(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    work = tmp_path_factory.mktemp("flow")
    torch.manual_seed(1)
    extractor = ContrastiveBackbone(BACKBONE, head=[8])  # stands for a pre-training run's checkpoint
    state = {k: v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v
             for k, v in extractor.state_dict().items()}
    torch.save({"state_dict": state, "anomaly_categories": ["washer"]}, work / "pretrained.ckpt")
    result = run("anomaly.train", *TINY, f"data.root={synthetic_root}", "data.category=washer",
                 "data.few_shot_anomalies=2", f"model.pretrained={work / 'pretrained.ckpt'}",
                 f"hydra.run.dir={work / 'run'}", cwd=work)
    assert result.returncode == 0, result.stderr[-3000:]
    return work / "run", state


def test_the_flow_trains_on_the_pretrained_extractor(flow_run: tuple[Path, dict]) -> None:
    run_dir, pretrained = flow_run
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    backbone = {k: v for k, v in saved.items() if k.startswith("model.backbone.")}
    assert backbone and all(torch.equal(v, pretrained[k]) for k, v in backbone.items())


def test_few_shot_images_are_listed_in_the_run_folder(flow_run: tuple[Path, dict]) -> None:
    run_dir, _ = flow_run
    shots = json.loads((run_dir / "few_shot.json").read_text())
    assert len(shots) == 2 and {s["category"] for s in shots} == {"washer"}
    assert all(s["defect"] != "good" and "/washer/test/" in s["image"] for s in shots)
    # The re-test reads the run's data options, so the same images stay out of its test set.
    assert json.loads((run_dir / "metrics.json").read_text())["config"]["data"]["few_shot_anomalies"] == 2


def test_the_checkpoint_re_tests_to_the_same_metrics(flow_run: tuple[Path, dict], tmp_path: Path) -> None:
    run_dir, _ = flow_run
    result = run("anomaly.evaluate", f"ckpt_path={run_dir}", f"hydra.run.dir={tmp_path / 'eval'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    trained = json.loads((run_dir / "metrics.json").read_text())["categories"]["washer"]
    again = json.loads((tmp_path / "eval" / "metrics.json").read_text())["categories"]["washer"]
    assert set(trained) == set(again)
    for name, value in trained.items():
        assert again[name] == pytest.approx(value, abs=1e-6), name


def test_the_flow_refuses_an_extractor_that_saw_other_real_anomalies(synthetic_root: Path, tmp_path: Path) -> None:
    """The pre-training's checkpoint records its few-shot images; a flow holding out others would test on them."""
    import lightning as L

    from anomaly.data.datamodule import AnomalyDataModule
    from anomaly.data.few_shot import FewShotMismatchError
    from anomaly.data.layouts import MVTecLayout
    from anomaly.models.flow import FlowDetector

    def data(**few_shot: int) -> AnomalyDataModule:
        return AnomalyDataModule(synthetic_root, MVTecLayout(), category="washer", image_size=32, batch_size=64,
                                 num_workers=0, few_shot_anomalies=2, **few_shot)

    def trainer() -> L.Trainer:
        return L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu", devices=1)

    pretraining, dm = trainer(), data()
    pretraining.fit(ContrastiveBackbone(BACKBONE, head=[8]), datamodule=dm)
    pretraining.save_checkpoint(tmp_path / "pre.ckpt")
    saved = torch.load(tmp_path / "pre.ckpt", map_location="cpu", weights_only=True)["anomaly_few_shot"]
    assert saved == dm.few_shot_listing() and len(saved) == 2
    flow = {"kind": "dense", "n_blocks": 1, "hidden": [8], "depth": 1, "scales": [32], "n_views": 1,
            "train_views": 1, "rotation": 0.0, "pretrained": str(tmp_path / "pre.ckpt")}
    with pytest.raises(FewShotMismatchError, match=r"^model\.pretrained=.*pre\.ckpt was pre-trained on 2 real "
                       r"anomalies \(washer/"):
        trainer().fit(FlowDetector(BACKBONE, **flow), datamodule=data(few_shot_seed=1))
    same = trainer()
    same.fit(FlowDetector(BACKBONE, **flow), datamodule=data())  # the same images held out: it trains
    assert same.global_step == 1
