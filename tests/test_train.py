"""The README's commands end to end, and the one-line errors a user sees on bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

SMALL = ["data.prepare=null", "data.image_size=96", "data.crop_size=null", "data.num_workers=0",
         "callbacks.heatmaps.n_images=2"]


def run(module: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "ANOMALY_ROOT": str(cwd), "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def trained_run(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`make train` with a small preset: PaDiM on two synthetic categories, separate setting."""
    work = tmp_path_factory.mktemp("train")
    categories = sorted(p.name for p in synthetic_root.iterdir() if p.is_dir())[:2]
    overrides = [f"data.root={synthetic_root}", f"data.category=[{','.join(categories)}]", *SMALL,
                 f"hydra.run.dir={work / 'run'}"]
    result = subprocess.run(["make", "-s", "-C", str(REPO), "train", f"ARGS={' '.join(overrides)}"],
                            capture_output=True, text=True, timeout=900,
                            env={**os.environ, "ANOMALY_ROOT": str(work)})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "mean" in result.stdout and "image_auroc" in result.stdout  # the printed table
    return work / "run"


def test_train_writes_the_run_folder(trained_run: Path) -> None:
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert len(metrics["categories"]) == 2
    assert set(metrics["mean"]) == {"image_auroc", "image_ap", "image_f1max", "pixel_auroc", "pixel_ap",
                                    "pixel_f1max", "pixel_aupro"}
    assert metrics["config"]["model"]["_target_"] == "anomaly.models.padim.Padim"
    assert metrics["versions"]["torch"].startswith("2.")
    for category in metrics["categories"]:
        assert (trained_run / "checkpoints" / category / "last.ckpt").is_file()
        assert len(list((trained_run / "images" / category).glob("*.png"))) == 2
    assert (trained_run / ".hydra" / "config.yaml").is_file()
    assert not list(trained_run.rglob("*.tmp"))  # atomic writes leave no temporaries


def test_evaluate_reproduces_train_metrics(trained_run: Path, tmp_path: Path) -> None:
    result = run("anomaly.evaluate", f"ckpt_path={trained_run}", f"hydra.run.dir={tmp_path / 'eval'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    trained = json.loads((trained_run / "metrics.json").read_text())
    again = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert again["categories"].keys() == trained["categories"].keys()
    for category, values in trained["categories"].items():
        for name, value in values.items():
            assert again["categories"][category][name] == pytest.approx(value, abs=1e-6), (category, name)


def test_evaluate_one_checkpoint_file(trained_run: Path, tmp_path: Path) -> None:
    ckpt = next((trained_run / "checkpoints").glob("*/last.ckpt"))
    result = run("anomaly.evaluate", f"ckpt_path={ckpt}", f"hydra.run.dir={tmp_path / 'eval'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    again = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert list(again["categories"]) == [ckpt.parent.name]


def test_checkpoint_of_another_method_is_refused(trained_run: Path, synthetic_root: Path, tmp_path: Path) -> None:
    ckpt = next((trained_run / "checkpoints").glob("*/last.ckpt"))
    payload = torch.load(ckpt, map_location="cpu", weights_only=False)
    payload["anomaly_method"] = "anomaly.models.ddpm.DDPM"
    other = tmp_path / "other.ckpt"
    torch.save(payload, other)
    result = run("anomaly.evaluate", f"ckpt_path={other}", f"hydra.run.dir={tmp_path / 'eval'}", cwd=tmp_path)
    assert result.returncode == 1
    assert "holds anomaly.models.ddpm.DDPM" in result.stderr
    resumed = run("anomaly.train", f"ckpt_path={other}", f"data.root={synthetic_root}", *SMALL,
                  f"hydra.run.dir={tmp_path / 'resume'}", cwd=tmp_path)
    assert resumed.returncode == 1 and "was written by anomaly.models.ddpm.DDPM" in resumed.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["model.backbone.nmae=resnet18"], "did you mean 'model.backbone.name'?"),
        (["data=mvtc"], "did you mean data=mvtec?"),
        (["data=mvtec", "data.root=/nonexistent/mvtec"], "data.root=/nonexistent/mvtec does not exist"),
        (["model.backbone.layers=[blocks.9]"], "model.backbone.layers has ['blocks.9']"),
    ],
)
def test_bad_input_stops_with_one_clear_line(args: list[str], message: str, tmp_path: Path) -> None:
    result = run("anomaly.train", *args, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert result.returncode != 0
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(error_lines) == 1 and message in error_lines[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_unknown_category_names_the_ones_that_exist(synthetic_root: Path, tmp_path: Path) -> None:
    result = run("anomaly.train", f"data.root={synthetic_root}", "data.prepare=null", "data.category=bottel",
                 f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert result.returncode == 1
    names = sorted(p.name for p in synthetic_root.iterdir() if p.is_dir())
    assert f"available: {', '.join(names)}" in result.stderr


def test_evaluate_on_data_elsewhere_as_the_readme_shows(trained_run: Path, synthetic_root: Path, tmp_path: Path) -> None:
    """`python -m anomaly.evaluate ckpt_path=<run>/checkpoints/last.ckpt data.root=/elsewhere` (README)."""
    import shutil

    ckpt = next((trained_run / "checkpoints").glob("*/last.ckpt"))
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(synthetic_root / ckpt.parent.name, elsewhere / ckpt.parent.name)
    result = run("anomaly.evaluate", f"ckpt_path={ckpt}", f"data.root={elsewhere}", f"hydra.run.dir={tmp_path / 'eval'}",
                 cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    again = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    trained = json.loads((trained_run / "metrics.json").read_text())["categories"][ckpt.parent.name]
    assert again["categories"][ckpt.parent.name] == pytest.approx(trained, abs=1e-6)
    typo = run("anomaly.evaluate", f"ckpt_path={ckpt}", "data.rot=/x", f"hydra.run.dir={tmp_path / 'typo'}", cwd=tmp_path)
    assert typo.returncode == 1 and "did you mean 'data.root'?" in typo.stderr
