"""The feasibility check before a model is built: a GPU asked for and absent, memory, pretrained weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from anomaly.conf import CONF_DIR
from anomaly.engine import feasibility
from anomaly.engine.feasibility import GIB, FeasibilityError

# The headline command must stop before this much is resident. Importing torch and lightning alone is ~1.0 GB
# resident here (the refusal peaks at ~1.3 GB); the model it refuses holds 5.3 GB of fp32 weights alone.
RSS_LIMIT = 2 * 2**30


def compose_train(overrides: list[str]) -> DictConfig:
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=overrides)


def run_watched(args: list[str], cwd: Path, timeout: float = 300) -> tuple[int, str, int]:
    """``python -m anomaly.train <args>`` from ``cwd``: exit code, stderr and peak RSS (bytes); killed (and
    failed) once its resident memory passes ``RSS_LIMIT``, so a run that builds the model never gets far."""
    cwd.mkdir(parents=True, exist_ok=True)
    err_path = cwd.parent / f"{cwd.name}.stderr"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(err_path, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "anomaly.train", *args], cwd=cwd, env=env,
                                stdout=subprocess.DEVNULL, stderr=err)
        start, peak = time.monotonic(), 0
        while proc.poll() is None:
            peak = max(peak, _rss(proc.pid))
            if peak > RSS_LIMIT or time.monotonic() - start > timeout:
                proc.kill()
                proc.wait()
                pytest.fail(f"{' '.join(args)} reached {peak / GIB:.2f} GiB resident (or {timeout} s) without stopping")
            time.sleep(0.1)
    return proc.returncode, err_path.read_text(), peak


def _rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def test_headline_diad_command_stops_with_one_sentence_before_building(synthetic_root: Path, tmp_path: Path) -> None:
    # The command the framework is introduced with: SD-1.5 layout, no weights -> not the paper's recipe.
    code, err, peak = run_watched(["model=diad", "data=mvtec", f"data.root={synthetic_root}"], tmp_path / "run")
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and lines[0].startswith("Error: "), err
    assert "model.unet.weights" in lines[0] and "experiment=diad_cpu" in lines[0]
    assert "feasibility.from_scratch=true" in lines[0]
    assert peak < RSS_LIMIT


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_gpu_paper_preset_without_cuda_stops_with_one_sentence(synthetic_root: Path, tmp_path: Path) -> None:
    code, err, _ = run_watched(["experiment=realnet_mvtec", f"data.root={synthetic_root}"], tmp_path / "run")
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and lines[0].startswith("Error: "), err
    assert "no GPU" in lines[0] and "trainer=cpu" in lines[0] and "experiment=realnet_cpu" in lines[0]


def test_small_cpu_preset_is_not_refused_and_runs(synthetic_root: Path, tmp_path: Path) -> None:
    overrides = ["experiment=realnet_cpu", f"data.root={synthetic_root}", "data.category=wood", "data.image_size=64",
                 "data.crop_size=null", "data.num_workers=0", "data.batch_size=8", "model.backbone.weights=none",
                 "model.backbone.layers=[blocks.1,blocks.2]", "model.k=[8,16]", "model.k_max=8", "model.k_mean=8",
                 "model.afs_batches=2", "model.pool_size=4", "trainer.max_epochs=1", "logger=none",
                 "callbacks.heatmaps.n_images=1", "trainer.enable_progress_bar=false"]
    found = feasibility.check(compose_train(overrides))
    assert found is not None and 0 < found.total_bytes < 2 * GIB
    assert found.trained > 0 and found.weights["model.backbone.weights"] == "none"
    code, err, _ = run_watched(overrides, tmp_path / "run")
    assert code == 0, err
    metrics = next((tmp_path / "run").rglob("metrics.json"))
    assert json.loads(metrics.read_text())["categories"].keys() == {"wood"}


def test_estimate_counts_diad_paper_sizes_and_refuses_what_does_not_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    scratch = feasibility.estimate(compose_train(["model=diad", "model.ema=false"]))
    assert scratch is not None
    assert round(scratch.parts["denoiser.unet"] / 1e6, 2) == 859.52  # bench/diad.py: SD-1.5's UNet
    # The paper's recipe freezes SD-1.5's encoder: fewer parameters train than from scratch (its files are not read).
    paper = feasibility.estimate(compose_train(["experiment=diad_mvtec"]))
    assert paper is not None and paper.parts["denoiser.unet"] == scratch.parts["denoiser.unet"]
    assert paper.trained < scratch.trained - 300e6 and scratch.weights["model.unet.weights"] == "none"
    assert paper.weights["model.unet.weights"] == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    # 1.3 B trained parameters with Adam in fp32: more than 20 GiB before any activation.
    assert scratch.state_bytes > 20 * GIB
    monkeypatch.setattr(feasibility, "_available", lambda device: 20 * GIB)
    with pytest.raises(FeasibilityError, match=r"needs about .* GiB .* experiment=diad_cpu or a GPU"):
        feasibility.check(compose_train(["model=diad", "model.ema=false", "feasibility.from_scratch=true",
                                         "trainer=cpu"]))
