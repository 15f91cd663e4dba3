"""Default thresholds come from normal images the model did not fit (issue 36, item 3), predict never
rewrites the training checkpoint (item 7), and a predict stopped mid-way says so (item 5).

A PaDiM run (no validation split) trained as a user types it, then ``python -m anomaly.predict`` on the
held-out test images: before, the threshold was the highest in-sample training score and every good
image was flagged."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from anomaly.deploy import load, sources
from anomaly.deploy.detector import Detector
from anomaly.deploy.pipeline import predict_images

pytestmark = pytest.mark.one_thread
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def padim_run(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``python -m anomaly.train`` (PaDiM, its recipe: ``data.val=none``) on capsule at 128 px, from an empty folder."""
    cwd = tmp_path_factory.mktemp("train")
    _run(["anomaly.train", f"data.root={synthetic_root}", "data.category=capsule", "data.image_size=128",
          "data.crop_size=null", "data.num_workers=0", "logger=none"], cwd)
    (run,) = (cwd / "outputs" / "runs").glob("*/*")
    return run


def test_padim_predict_flags_few_unseen_good_images_and_catches_defects(padim_run: Path, synthetic_root: Path,
                                                                       tmp_path: Path) -> None:
    checkpoint = padim_run / "checkpoints" / "last.ckpt"
    before = (checkpoint.read_bytes(), checkpoint.stat().st_mtime_ns)
    done = _run(["anomaly.predict", f"ckpt_path={padim_run}", f"input={synthetic_root / 'capsule' / 'test'}",
                 f"output={tmp_path / 'out'}", "progress=false", "overlays=false"], tmp_path)
    rows = list(csv.DictReader((tmp_path / "out" / "scores.csv").open()))
    good = [r["decision"] == "anomalous" for r in rows if Path(r["path"]).parent.name == "good"]
    defective = [r["decision"] == "anomalous" for r in rows if Path(r["path"]).parent.name != "good"]
    assert len(good) == 20 and len(defective) == 40
    assert sum(good) / len(good) <= 0.25, f"{sum(good)} of {len(good)} unseen good images flagged"
    assert sum(defective) / len(defective) >= 0.2, f"only {sum(defective)} of {len(defective)} defective caught"
    assert {r["threshold_source"] for r in rows} == {"holdout"}
    assert "holdout threshold" in done.stdout
    summary = json.loads((tmp_path / "out" / "predict.json").read_text())
    assert summary["status"] == "finished" and summary["threshold_sources"] == ["holdout"]
    assert summary["images_done"] == summary["images_total"] == 60
    assert not (tmp_path / "out" / "scores.partial.csv").exists()
    assert (checkpoint.read_bytes(), checkpoint.stat().st_mtime_ns) == before  # predict never rewrites it
    payload = torch.load(checkpoint, map_location="cpu", weights_only=True)
    holdout = payload["anomaly_thresholds"]["holdout"]  # computed at train time, stored with the weights
    assert holdout["refit"] and holdout["groups"]["capsule"]["images"] == 60  # every training image, cross-fitted
    assert len(json.loads((padim_run / "calibration_split.json").read_text())) == 60


def test_an_older_checkpoint_gets_its_thresholds_beside_it_not_in_it(padim_run: Path, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A checkpoint without ``holdout`` (trained before this): computed once by a cross-fit, kept in a JSON
    beside it keyed by the checkpoint (a replaced checkpoint's are ignored), the checkpoint untouched."""
    old = tmp_path / "last.ckpt"
    payload = torch.load(padim_run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    stored = payload.pop("anomaly_thresholds")["holdout"]
    torch.save(payload, old)
    before = (old.read_bytes(), old.stat().st_mtime_ns)
    first = load(old)
    assert first.thresholds.source == "holdout"
    assert first.thresholds.image == pytest.approx(stored["groups"]["capsule"]["image"], rel=1e-4)
    assert (old.read_bytes(), old.stat().st_mtime_ns) == before
    sidecar = old.with_name("last.ckpt.thresholds.json")
    assert json.loads(sidecar.read_text())["thresholds"]["holdout"]["groups"]["capsule"]["images"] == 60

    def recompute(*args: object) -> None:
        raise RuntimeError("recomputed")

    monkeypatch.setattr(sources, "cross_fit", recompute)
    assert load(old).thresholds.image == first.thresholds.image  # read from the JSON
    torch.save(payload, old)  # another checkpoint at that path: the kept thresholds are not its own
    with pytest.raises(RuntimeError, match="recomputed"):
        load(old)


def test_a_predict_stopped_mid_way_says_running_or_failed_with_its_counts(padim_run: Path, synthetic_root: Path,
                                                                           tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """What a kill would leave after two batches (read then), and the ``failed`` mark of an error."""
    images = synthetic_root / "capsule" / "test" / "good"
    out = tmp_path / "out"
    seen: list[dict] = []
    real = Detector.predict

    def stop_at_third(self: Detector, batch: list) -> list:
        if len(seen) == 2:
            state = json.loads((out / "predict.json").read_text())
            state["scores.csv exists"] = (out / "scores.csv").exists()
            partial = out / "scores.partial.csv"
            state["partial rows"] = len(list(csv.DictReader(partial.open()))) if partial.exists() else None
            seen.append(state)
            raise RuntimeError("stopped")
        seen.append({})
        return real(self, batch)

    monkeypatch.setattr(Detector, "predict", stop_at_third)
    with pytest.raises(RuntimeError, match="stopped"):
        predict_images(images, out, lambda _: load(padim_run), batch_size=4, overlays=False, maps=False,
                       progress=False)
    killed = seen[-1]
    assert killed.get("status") == "running" and (killed["images_done"], killed["images_total"]) == (8, 20)
    assert not killed["scores.csv exists"] and killed["partial rows"] == 8
    failed = json.loads((out / "predict.json").read_text())
    assert failed.get("status") == "failed" and "stopped" in failed["error"]
    assert (failed["images_done"], failed["images_total"]) == (8, 20) and not (out / "scores.csv").exists()
