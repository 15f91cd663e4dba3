"""Shared fixtures: a small synthetic data set generated once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# Two intra-op threads at most; under pytest-xdist (`make test` runs one worker per core) the workers share the cores.
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, min(2, (os.cpu_count() or 1) // WORKERS)))
REPO = Path(__file__).resolve().parents[1]
# The toy method of tests/test_engine.py is no class of the anomaly package: its checkpoints load only because
# the suite trusts it, as a user trusts their own class (README, "Checkpoints are data"); subprocesses inherit it.
os.environ.setdefault("ANOMALY_TRUSTED_TARGETS", "tests.test_engine.ToySegmenter")


@pytest.fixture(autouse=True, scope="module")
def one_thread(request: pytest.FixtureRequest):
    """One intra-op thread for modules marked ``pytestmark = pytest.mark.one_thread``: small nets gain
    nothing from two, and on a busy 2-core machine two threads thrash (10-40× slower)."""
    if request.node.get_closest_marker("one_thread") is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def no_hydra_job_left_behind():
    """A test that set Hydra's job config (to resolve ``${hydra:...}``) leaves none for the next test in the
    worker: code that asks ``HydraConfig`` whether it runs in a job (the engine's ``_job``) must see the truth."""
    yield
    from hydra.core.hydra_config import HydraConfig

    HydraConfig.instance().cfg = None


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded synthetic data set at its default size (all categories, 256 px)."""
    from anomaly.data.synthetic import ensure_synthetic

    root = tmp_path_factory.mktemp("data") / "synthetic"
    ensure_synthetic(root, seed=0, image_size=256)
    return root
