"""anomaly.predict and the deploy API on tiny trained runs: every readable image gets a row, a panel and
its raw map, the bad one is named; decisions follow the stored threshold and the override; thresholds
come from the source recorded (validation for a validating run, held-out normal training images for PaDiM)."""

from __future__ import annotations

import csv
import functools
import re
import tempfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf, open_dict

from anomaly.data.image_io import read_image
from anomaly.deploy import load
from anomaly.engine import fit
from anomaly.engine.checkpoints import CheckpointError
from anomaly.predict import predict

pytestmark = pytest.mark.one_thread
REPO = Path(__file__).resolve().parents[1]
SIZE = 32


def tiny_tree(root: Path, category: str = "tile", seed: int = 0) -> Path:
    """An MVTec-layout set of 32² images: smooth normal texture, anomalies are bright squares."""
    rng = np.random.default_rng(seed)

    def texture() -> np.ndarray:
        base = cv2.GaussianBlur(rng.normal(128, 40, (SIZE, SIZE, 3)), (0, 0), 2)
        return np.clip(base, 0, 255).astype(np.uint8)

    for i in range(16):
        _save(root / category / "train" / "good" / f"{i:03d}.png", texture())
    for i in range(4):
        _save(root / category / "test" / "good" / f"{i:03d}.png", texture())
        image, mask = texture(), np.zeros((SIZE, SIZE), np.uint8)
        y, x = rng.integers(4, SIZE - 12, 2)
        image[y:y + 8, x:x + 8] = 255
        mask[y:y + 8, x:x + 8] = 255
        _save(root / category / "test" / "square" / f"{i:03d}.png", image)
        _save(root / category / "ground_truth" / "square" / f"{i:03d}_mask.png", mask)
    return root


def _save(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), image[..., ::-1] if image.ndim == 3 else image)


PADIM = ["model.backbone.weights=none", "model.n_features=16"]
TOY = ["model._target_=tests.test_engine.ToySegmenter", "~model.backbone", "~model.input_size", "~model.n_features",
       "~model.epsilon", "~model.sigma", "~model.seed", "~model.chunk", "+model.width=8", "+model.lr=1e-2",
       "synthesis=perlin", "data.val=synthetic", "data.val_fraction=0.25", "trainer.max_epochs=2"]


@functools.cache
def trained_run(kind: str) -> Path:
    """A run folder of a tiny PaDiM (``padim``: no validation split) or toy segmenter (``toy``: validated)."""
    work = Path(tempfile.mkdtemp(prefix=f"deploy_{kind}_"))
    data = tiny_tree(work / "data")
    overrides = ["data=mvtec", f"data.root={data}", "data.category=tile", f"data.image_size={SIZE}",
                 "data.crop_size=null", "data.num_workers=0", "data.batch_size=8", "data.eval_batch_size=8",
                 "logger=none", "callbacks.heatmaps.n_images=0", "trainer.accelerator=cpu",
                 "trainer.enable_progress_bar=false", f"paths.root_dir={work}", f"paths.output_dir={work / 'run'}", *(PADIM if kind == "padim" else TOY)]
    with initialize_config_module("anomaly.conf", version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    with open_dict(cfg):
        cfg.callbacks.model_checkpoint.dirpath = str(work / "run" / "checkpoints")
    fit(cfg)
    return work / "run"


def images_with_one_corrupt(folder: Path, run: Path) -> list[Path]:
    data = run.parent / "data" / "tile" / "test"
    good = sorted(data.rglob("*.png"))
    for path in good:
        target = folder / "tile" / path.parent.name / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(path.read_bytes())
    bad = folder / "tile" / "square" / "broken.png"
    bad.write_bytes(good[0].read_bytes()[:100])
    return good


def run_predict(run: Path, input_dir: Path, output: Path, **options: object) -> list[dict[str, str]]:
    cfg = OmegaConf.create({"ckpt_path": str(run), "input": str(input_dir), "output": str(output), "category": None,
                            "threshold": None, "pixel_threshold": None, "threshold_source": "auto", "runtime": None,
                            "threads": None, "batch_size": 3, "overlays": True, "maps": True, "progress": False,
                            **options})
    predict(cfg)
    with (output / "scores.csv").open() as handle:
        return list(csv.DictReader(handle))


def test_predict_writes_every_readable_image_and_names_the_corrupt_one(tmp_path: Path) -> None:
    run = trained_run("padim")
    good = images_with_one_corrupt(tmp_path / "in", run)
    rows = run_predict(run, tmp_path / "in", tmp_path / "out")
    assert sorted(Path(r["path"]).name + Path(r["path"]).parent.name for r in rows) == sorted(
        p.name + p.parent.name for p in good)
    skipped = list(csv.DictReader((tmp_path / "out" / "skipped.csv").open()))
    assert [Path(s["path"]).name for s in skipped] == ["broken.png"] and "truncated" in skipped[0]["reason"]
    detector = load(run)
    for row in rows:
        name = f"tile_{Path(row['path']).parent.name}_{Path(row['path']).stem}"
        raw = np.load(tmp_path / "out" / "maps" / f"{name}.npy")
        assert raw.shape == (SIZE, SIZE)
        panel = read_image(tmp_path / "out" / "overlays" / f"{name}.png")
        assert panel.shape == (SIZE, 3 * SIZE, 3)
        # The same numbers as the API on the same file (the checkpoint's own transform).
        assert float(row["score"]) == pytest.approx(detector(row["path"]).score, rel=1e-5)
        assert row["category"] == "tile"


def test_padim_without_validation_thresholds_on_held_out_normal_scores() -> None:
    run = trained_run("padim")
    checkpoint = run / "checkpoints" / "last.ckpt"
    payload = torch.load(checkpoint, map_location="cpu", weights_only=True)
    holdout = payload["anomaly_thresholds"]["holdout"]["groups"]["tile"]  # stored at train time
    detector = load(run)
    assert detector.thresholds.source == "holdout"
    # The split-conformal quantile at 10 % of the 16 cross-fitted scores: the ceil(17 * 0.9) = 16th smallest.
    assert holdout["images"] == 16 and detector.thresholds.image == sorted(holdout["scores"])[15]
    # In-sample scores only when asked for: the highest, kept beside the checkpoint, which stays as it was.
    before = checkpoint.read_bytes()
    train = sorted((run.parent / "data" / "tile" / "train" / "good").glob("*.png"))
    scores = [detector(p).score for p in train]
    in_sample = load(run, threshold_source="train")
    assert in_sample.thresholds.source == "train"
    assert in_sample.thresholds.image == pytest.approx(max(scores), rel=1e-5)
    assert in_sample.thresholds.image < detector.thresholds.image
    assert checkpoint.read_bytes() == before and (run / "checkpoints" / "last.ckpt.thresholds.json").is_file()


def test_decisions_follow_the_stored_validation_threshold_and_the_override(tmp_path: Path) -> None:
    run = trained_run("toy")
    payload = torch.load(run / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    stored = payload["anomaly_thresholds"]["val"]
    assert stored["global_step"] == payload["global_step"]  # the validation best.ckpt was selected on
    detector = load(run)
    assert detector.thresholds.source == "val"
    assert detector.thresholds.image == stored["groups"]["tile"]["image"]
    images_with_one_corrupt(tmp_path / "in", run)
    rows = run_predict(run, tmp_path / "in", tmp_path / "stored")
    scores = np.array([float(r["score"]) for r in rows])
    assert [r["decision"] for r in rows] == ["anomalous" if s >= detector.thresholds.image else "normal" for s in scores]
    normalised = np.array([float(r["normalised_score"]) for r in rows])
    assert ((normalised >= 0.5) == (scores >= detector.thresholds.image)).all()
    middle = float(np.median(scores))
    rows = run_predict(run, tmp_path / "in", tmp_path / "override", threshold=middle)
    decisions = [r["decision"] == "anomalous" for r in rows]
    assert decisions == [float(r["score"]) >= middle for r in rows] and 0 < sum(decisions) < len(decisions)


def test_not_our_checkpoint_and_empty_folder_are_one_sentence_errors(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}}, foreign)
    with pytest.raises(CheckpointError, match="not written by anomaly.train"):
        load(foreign)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="folder without images"):
        run_predict(trained_run("padim"), tmp_path / "empty", tmp_path / "out")


def test_readme_api_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    """The Deploy section's example, with its run folder and image replaced by the tiny run's."""
    text = (REPO / "README.md").read_text()
    code = re.search(r"<!-- deploy-api -->\s*```python\n(.*?)```", text, re.S).group(1)
    run = trained_run("padim")
    image = sorted((run.parent / "data" / "tile" / "test" / "square").glob("*.png"))[0]
    code = re.sub(r'load\("[^"]*"', f'load("{run}"', code)
    code = re.sub(r'read_image\("[^"]*"\)', f'read_image("{image}")', code)
    code = re.sub(r'category="[^"]*"', 'category="tile"', code)
    code = re.sub(r'detector\("[^"]*"\)', f'detector("{image}")', code)
    exec(compile(code, "README.md", "exec"), {})
    printed = capsys.readouterr().out
    assert "anomalous" in printed or "normal" in printed

