"""bench/gpu_check.py: composes every paper preset without CUDA, and its run path works (CPU, tiny sizes)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "gpu_check.py"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the line of a machine without CUDA")
def test_without_cuda_it_says_so_and_checks_every_preset_composes(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(SCRIPT)], cwd=tmp_path, capture_output=True, text=True, env=ENV,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ("No CUDA device on this machine: nothing timed; 7 of 7 paper presets compose "
                                   "under trainer=gpu with their overrides.")


def test_cpu_run_prints_a_row_per_preset_and_a_failure_stays_in_its_row(tmp_path: Path) -> None:
    # padim_r18 at 64 px runs; model.n_features is no option of RealNet, so its row fails and the table goes on.
    done = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--presets", "padim_r18", "realnet_mvtec",
                           "--override", "data.image_size=64", "data.crop_size=null", "model.n_features=10",
                           "--timeout", "240"], cwd=tmp_path, capture_output=True, text=True, env=ENV, timeout=600)
    rows = {line.split()[0]: line.split() for line in done.stdout.splitlines() if line.startswith(("padim", "real"))
            and "done" not in line and "failed" not in line}
    assert done.returncode == 1, done.stdout + done.stderr
    padim, realnet = rows["padim_r18"], rows["realnet_mvtec"]
    assert float(padim[1]) > 0 and float(padim[2]) > 0 and padim[5] == "yes"  # steps/s, test img/s, metrics
    assert "Unknown option 'model.n_features'" in " ".join(realnet)
