"""The method contract alone is enough: a toy gradient method plugs in, trains, validates, selects,
tests, re-tests and reloads; runs get unique folders, per-category logger versions, user configs."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anomaly.models.base import AnomalyModule

REPO = Path(__file__).resolve().parents[1]
SMALL = ["data.prepare=null", "data.image_size=64", "data.crop_size=null", "data.num_workers=0",
         "data.batch_size=8", "data.eval_batch_size=16", "callbacks.heatmaps.n_images=2", "trainer.accelerator=cpu"]


class ToySegmenter(AnomalyModule):
    """A tiny conv net that learns to segment the training synthesis' anomalies (tens of lines)."""

    def __init__(self, width: int = 8, lr: float = 3e-3, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.net = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(),
                                 nn.Conv2d(width, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, 1, 1))
        self.lr = lr

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor]:
        anomaly_map = torch.sigmoid(self.net(image))
        return anomaly_map, anomaly_map.flatten(1).amax(1)

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> Tensor:
        loss = F.binary_cross_entropy_with_logits(self.net(batch["image"]), batch["mask"])
        self.log("train/loss", loss, batch_size=batch["image"].shape[0])
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)


TOY = ["model._target_=tests.test_engine.ToySegmenter", "~model.backbone", "~model.input_size", "~model.n_features",
       "~model.epsilon", "~model.sigma", "~model.seed", "~model.chunk", "+model.width=16", "+model.lr=1e-2",
       "synthesis=perlin", "data.val=synthetic", "trainer.max_epochs=8"]


def run(module: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "ANOMALY_ROOT": str(cwd), "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def categories_of(root: Path, n: int) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.is_dir())[:n]


@pytest.fixture(scope="module")
def toy_run(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("toy")
    category = categories_of(synthetic_root, 1)[0]
    result = run("anomaly.train", *TOY, f"data.root={synthetic_root}", f"data.category={category}", *SMALL,
                 f"hydra.run.dir={work / 'run'}", cwd=work)
    assert result.returncode == 0, result.stderr[-3000:]
    return work / "run"


def test_toy_method_trains_validates_and_selects_best(toy_run: Path) -> None:
    metrics = json.loads((toy_run / "metrics.json").read_text())
    assert metrics["selected_on"].startswith("validation")
    assert (toy_run / "checkpoints" / "best.ckpt").is_file() and (toy_run / "checkpoints" / "last.ckpt").is_file()
    payload = torch.load(toy_run / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    ranked = next(v for k, v in payload["callbacks"].items() if k.startswith("ModelCheckpoint"))
    assert ranked["monitor"] == "val/mean/image_auroc"
    # The validation numbers of the selected model are the best the checkpoint callback saw.
    assert metrics["validation"]["mean"]["image_auroc"] == pytest.approx(float(ranked["best_model_score"]), abs=1e-6)
    logged = (toy_run / "csv" / "metrics.csv").read_text().splitlines()[0]
    assert "val/mean/image_auroc" in logged and "test/mean/image_auroc" in logged
    # It learns the synthetic anomalies well above chance on held-out validation images.
    assert metrics["validation"]["mean"]["pixel_auroc"] > 0.7


def test_toy_method_retests_and_reloads_to_the_same_scores(toy_run: Path, tmp_path: Path) -> None:
    result = run("anomaly.evaluate", f"ckpt_path={toy_run}", f"hydra.run.dir={tmp_path / 'eval'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    trained = json.loads((toy_run / "metrics.json").read_text())["categories"]
    again = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert again["checkpoints"] == [str(toy_run / "checkpoints" / "best.ckpt")]
    for category, values in trained.items():
        for name, value in values.items():
            assert again["categories"][category][name] == pytest.approx(value, abs=1e-6), (category, name)
    model = ToySegmenter.load_from_checkpoint(toy_run / "checkpoints" / "best.ckpt", weights_only=True)
    image = torch.randn(2, 3, 64, 64)
    state = torch.load(toy_run / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    fresh = ToySegmenter(width=16)
    fresh.load_state_dict(state)
    assert torch.equal(model(image)[1], fresh(image)[1])
    assert model.categories == list(trained)


def test_last_checkpoint_is_the_last_state_when_the_best_is_earlier(synthetic_root: Path, tmp_path: Path) -> None:
    """last.ckpt is the newest state (ckpt_path=last resumes from there), not the best epoch's: ranked on the step
    with mode=min, best.ckpt stays at the first validation (epoch 2 of 3); last.ckpt follows it and is written
    again when training ends after an epoch no validation saved."""
    category = categories_of(synthetic_root, 1)[0]
    result = run("anomaly.train", *TOY, f"data.root={synthetic_root}", f"data.category={category}", *SMALL,
                 "trainer.max_epochs=3", "trainer.check_val_every_n_epoch=2", "callbacks.model_checkpoint.monitor=step",
                 "callbacks.model_checkpoint.mode=min", "test=false", "logger=none", f"hydra.run.dir={tmp_path / 'run'}",
                 cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    folder = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["best.ckpt", "last.ckpt"]
    best, last = (torch.load(folder / name, map_location="cpu", weights_only=True) for name in ("best.ckpt", "last.ckpt"))
    steps_per_epoch = best["global_step"] // 2
    assert best["epoch"] == 1 and steps_per_epoch > 0 and best["global_step"] == 2 * steps_per_epoch
    assert last["global_step"] == 3 * steps_per_epoch


def test_ckpt_path_last_resumes_where_the_run_stopped(synthetic_root: Path, tmp_path: Path) -> None:
    """A run stopped after 2 epochs, started again in its folder with ckpt_path=last and 3 epochs, trains the
    third epoch only: its log keeps the first two epochs' rows and adds the third's, each step once, and
    last.ckpt ends at 3 epochs' steps."""
    category = categories_of(synthetic_root, 1)[0]
    base = [*TOY, f"data.root={synthetic_root}", f"data.category={category}", *SMALL, "test=false",
            "trainer.log_every_n_steps=1", f"hydra.run.dir={tmp_path / 'run'}"]
    first = run("anomaly.train", *base, "trainer.max_epochs=2", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    steps_per_epoch = torch.load(last, map_location="cpu", weights_only=True)["global_step"] // 2
    second = run("anomaly.train", *base, "trainer.max_epochs=3", "ckpt_path=last", cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 3 * steps_per_epoch
    rows = list(csv.DictReader((tmp_path / "run" / "csv" / "metrics.csv").open()))
    steps = [int(row["step"]) for row in rows if row.get("train/loss")]
    assert steps == list(range(3 * steps_per_epoch))


def test_separate_categories_log_as_their_own_versions(synthetic_root: Path, tmp_path: Path) -> None:
    first, second = categories_of(synthetic_root, 2)
    result = run("anomaly.train", *TOY, f"data.root={synthetic_root}", f"data.category=[{first},{second}]", *SMALL,
                 "trainer.max_epochs=1", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    versions = sorted(p.name for p in (tmp_path / "run" / "csv").iterdir() if p.is_dir())
    assert versions == [first, second]
    for category in (first, second):
        rows = (tmp_path / "run" / "csv" / category / "metrics.csv").read_text()
        assert f"test/{category}/image_auroc" in rows.splitlines()[0]
        assert (tmp_path / "run" / "checkpoints" / category / "best.ckpt").is_file()
    listing = json.loads((tmp_path / "run" / "val_split.json").read_text())
    assert {row["category"] for row in listing} == {first, second} and {row["from"] for row in listing} == {"train"}


def test_runs_started_in_the_same_second_get_two_folders(synthetic_root: Path, tmp_path: Path) -> None:
    category = categories_of(synthetic_root, 1)[0]
    args = [sys.executable, "-m", "anomaly.train", f"data.root={synthetic_root}", f"data.category={category}",
            *[o for o in SMALL if not o.startswith("callbacks.")], "test=false", "logger=none", "callbacks=none"]
    env = {**os.environ, "ANOMALY_ROOT": str(tmp_path), "PYTHONPATH": str(REPO)}
    jobs = [subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            for _ in range(2)]
    for job in jobs:  # communicate() drains and closes both pipes (a full pipe would block the job)
        _, err = job.communicate(timeout=600)
        assert job.returncode == 0, err.decode()[-2000:]
    folders = sorted((tmp_path / "outputs" / "runs").glob("*/*"))
    assert len(folders) == 2, folders
    assert all((folder / ".hydra" / "config.yaml").is_file() for folder in folders)


def test_an_option_in_a_user_config_folder_composes_and_runs(synthetic_root: Path, tmp_path: Path) -> None:
    mine = tmp_path / "myconf" / "data"
    mine.mkdir(parents=True)
    (mine / "mine.yaml").write_text(
        f"root: {synthetic_root}\nlayout:\n  _target_: anomaly.data.layouts.MVTecLayout\ncrop_size: null\n"
        f"category: {categories_of(synthetic_root, 1)[0]}\n"
    )
    args = ["--config-dir", str(tmp_path / "myconf"), "data=mine", "data.image_size=64", "data.prepare=null",
            "data.num_workers=0", "callbacks.heatmaps.n_images=0", f"hydra.run.dir={tmp_path / 'run'}"]
    result = run("anomaly.train", *args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    config = json.loads((tmp_path / "run" / "metrics.json").read_text())["config"]
    # The data set's own YAML wins over the model's recipe (PaDiM's recipe crops to 224).
    assert config["data"]["crop_size"] is None and config["data"]["root"] == str(synthetic_root)
    typo = run("anomaly.train", *args[:2], "data=mien", f"hydra.run.dir={tmp_path / 'typo'}", cwd=tmp_path)
    assert typo.returncode == 1 and "did you mean data=mine?" in typo.stderr


def test_built_wheel_ships_the_configs(tmp_path: Path) -> None:
    import shutil

    source = tmp_path / "src"
    shutil.copytree(REPO / "anomaly", source / "anomaly", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                             "-w", str(tmp_path), str(source)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    import zipfile

    names = zipfile.ZipFile(next(tmp_path.glob("anomaly-*.whl"))).namelist()
    for config in ("anomaly/conf/train.yaml", "anomaly/conf/eval.yaml", "anomaly/conf/base/data.yaml",
                   "anomaly/conf/model/padim.yaml", "anomaly/conf/synthesis/texture/procedural.yaml"):
        assert config in names


def test_bad_checkpoints_stop_with_one_sentence(synthetic_root: Path, tmp_path: Path) -> None:
    category = categories_of(synthetic_root, 1)[0]
    base = [f"data.root={synthetic_root}", f"data.category={category}", *SMALL]
    not_a_checkpoint = tmp_path / "notes.ckpt"
    not_a_checkpoint.write_text("not a checkpoint")
    result = run("anomaly.train", *base, f"ckpt_path={not_a_checkpoint}", f"hydra.run.dir={tmp_path / 'a'}", cwd=tmp_path)
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert result.returncode == 1 and len(errors) == 1 and "is not a readable checkpoint" in errors[0], result.stderr
    trained = run("anomaly.train", *base, "model.n_features=16", "test=false", f"hydra.run.dir={tmp_path / 'b'}",
                  cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr[-2000:]
    other = run("anomaly.train", *base, "model.n_features=8", f"ckpt_path={tmp_path / 'b' / 'checkpoints' / 'last.ckpt'}",
                f"hydra.run.dir={tmp_path / 'c'}", cwd=tmp_path)
    errors = [line for line in other.stderr.splitlines() if line.startswith("Error:")]
    assert other.returncode == 1 and len(errors) == 1 and "of other shapes" in errors[0], other.stderr[-2000:]
    assert "size mismatch for" in errors[0] and "Traceback" not in other.stderr
