"""Shared fixtures: a small synthetic data set generated once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded synthetic data set at its default size (all categories, 256 px)."""
    from anomaly.data.synthetic import ensure_synthetic

    root = tmp_path_factory.mktemp("data") / "synthetic"
    ensure_synthetic(root, seed=0, image_size=256)
    return root
