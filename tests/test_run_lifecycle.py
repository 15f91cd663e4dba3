"""A run's life as a user meets it: ``ckpt_path=last`` resumes the run it means in its own folder with
every log row kept, ``ckpt_path=<run folder>`` resumes that run, a second training into a busy folder stops
with one sentence and writes nothing, and a run that stops on an exception says so in its manifest."""

from __future__ import annotations

import csv
import fcntl
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
TINY = ["data.category=capsule", "data.image_size=64", "data.crop_size=null", "data.num_workers=0",
        "data.batch_size=8", "data.eval_batch_size=16", "callbacks.heatmaps.n_images=2", "trainer.accelerator=cpu"]
# The toy gradient method of test_engine (two conv layers), trained for whole epochs, one row per step.
TOY = ["model._target_=tests.test_engine.ToySegmenter", "~model.backbone", "~model.input_size", "~model.n_features",
       "~model.epsilon", "~model.sigma", "~model.seed", "~model.chunk", "+model.width=8", "+model.lr=1e-2",
       "synthesis=perlin", "data.val=synthetic", "test=false", "trainer.log_every_n_steps=1"]


def train(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``python -m anomaly.train ...`` from ``cwd`` (PYTHONPATH only so the toy method in tests/ imports)."""
    env = {k: v for k, v in os.environ.items() if k != "ANOMALY_ROOT"}
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "anomaly.train", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def run_folders(cwd: Path) -> list[Path]:
    return sorted(p.parent for p in (cwd / "outputs" / "runs").glob("*/*/manifest.json"))


def train_steps(run: Path) -> list[int]:
    rows = list(csv.DictReader((run / "csv" / "metrics.csv").open()))
    return [int(row["step"]) for row in rows if row.get("train/loss")]


def global_step(run: Path) -> int:
    return torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["global_step"]


def test_ckpt_path_last_resumes_the_run_in_its_folder_and_keeps_every_log_row(synthetic_root: Path,
                                                                            tmp_path: Path) -> None:
    """2 epochs, then the same command with 3 epochs and ``ckpt_path=last`` (no run folder named): the third
    epoch trains in the first run's folder, whose CSV still holds the first session's rows; then
    ``ckpt_path=<run folder>`` alone (its overrides are re-applied) extends it to 4 epochs; with another model
    option it is refused and nothing in the folder changes."""
    base = [*TOY, f"data.root={synthetic_root}", *TINY]
    first = train(*base, "trainer.max_epochs=2", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    [run] = run_folders(tmp_path)
    per_epoch = global_step(run) // 2
    assert per_epoch > 0 and train_steps(run) == list(range(2 * per_epoch))

    second = train(*base, "trainer.max_epochs=3", "ckpt_path=last", cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert run_folders(tmp_path) == [run]  # no new run folder
    assert global_step(run) == 3 * per_epoch
    assert train_steps(run) == list(range(3 * per_epoch))  # the first session's rows, then the third epoch's
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "finished" and [s["status"] for s in manifest["earlier"]] == ["finished"]

    third = train(f"ckpt_path={run}", "trainer.max_epochs=4", cwd=tmp_path)
    assert third.returncode == 0, third.stderr[-3000:]
    assert run_folders(tmp_path) == [run] and global_step(run) == 4 * per_epoch
    assert train_steps(run) == list(range(4 * per_epoch))

    def files() -> dict[Path, bytes]:  # (the lock file names its latest holder)
        return {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != ".lock"}

    before = files()
    changed = train(f"ckpt_path={run}", "+model.lr=0.5", cwd=tmp_path)  # another config: refused, run untouched
    assert changed.returncode == 1 and changed.stderr.strip().splitlines() == [
        changed.stderr.strip()] and changed.stderr.startswith(f"Error: cannot resume {run}") and "model.lr" in changed.stderr
    assert files() == before


def test_ckpt_path_last_with_no_such_run_says_what_to_add(synthetic_root: Path, tmp_path: Path) -> None:
    result = train(f"data.root={synthetic_root}", *TINY, "model.backbone.weights=none", "ckpt_path=last", cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("Error: ckpt_path=last: no run under") and "ckpt_path=<run folder>" in line
    assert not (tmp_path / "outputs" / "runs").exists() or not any((tmp_path / "outputs" / "runs").iterdir())


@pytest.mark.parametrize("how", ["hydra.run.dir", "ckpt_path"])
def test_a_second_training_into_a_busy_run_folder_stops_and_writes_nothing(how: str, synthetic_root: Path,
                                                                           tmp_path: Path) -> None:
    """Another training holds ``<run>/.lock``: one named as the README does (``hydra.run.dir=outputs/...``) or
    resumed by its folder stops with one sentence naming the folder and the holder, before Hydra writes."""
    run = tmp_path / "outputs" / "busy"
    run.mkdir(parents=True)
    (run / "manifest.json").write_text(json.dumps({"status": "running", "config": {}, "overrides": TINY}))
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    with open(run / ".lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write(f"{os.getpid()} testhost\n")
        held.flush()
        before[".lock"] = (run / ".lock").read_bytes()
        target = "hydra.run.dir=outputs/busy" if how == "hydra.run.dir" else f"ckpt_path={run}"
        result = train(f"data.root={synthetic_root}", *TINY, "model.backbone.weights=none", target, cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"Error: {run} is in use by another training (process {os.getpid()} on testhost)")
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before  # nothing written, nothing added
    assert not (tmp_path / "outputs" / "runs").exists()


def test_a_run_stopped_by_an_exception_is_marked_failed(synthetic_root: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl+C during fitting (Lightning turns it into ``SystemExit(1)``) leaves ``status: failed`` with the
    error and the time in ``manifest.json``, not ``running``; the folder's lock is released."""
    from hydra import compose, initialize_config_module

    import anomaly.config.resolvers  # noqa: F401 - the ${anomaly.*} resolvers of the configs
    from anomaly.engine import fit
    from anomaly.engine.lock import is_held
    from anomaly.models.padim import Padim

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    run = tmp_path / "run"
    with initialize_config_module("anomaly.conf", version_base="1.3"):
        cfg = compose("train", overrides=[f"data.root={synthetic_root}", *TINY[:5], "model.backbone.weights=none",
                                          "logger=none", f"paths.root_dir={tmp_path}", f"paths.output_dir={run}"])
    monkeypatch.setattr(Padim, "training_step", interrupted)
    sigint = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises((SystemExit, KeyboardInterrupt)):
            fit(cfg)
    finally:
        signal.signal(signal.SIGINT, sigint)  # Lightning ignores further Ctrl+C while it shuts down
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "failed" and manifest["error"]["type"] == "KeyboardInterrupt"
    assert manifest["failed"] >= manifest["started"] and "finished" not in manifest
    assert not is_held(run)


def test_a_run_made_before_an_option_existed_still_resumes(tmp_path: Path) -> None:
    """A key only the new config has (an option added by a later version) is no difference; a changed value is."""
    from anomaly.config.check import ConfigError
    from anomaly.engine.resume import check_same_run

    old = {"model": {"sigma": 4.0}, "data": {"root": "x"}}
    (tmp_path / "manifest.json").write_text(json.dumps({"config": old}))
    check_same_run(tmp_path, {"model": {"sigma": 4.0}, "data": {"root": "x", "few_shot_mode": "images"}})
    with pytest.raises(ConfigError, match=r"model\.sigma \(4\.0 -> 2\.0\)"):
        check_same_run(tmp_path, {"model": {"sigma": 2.0}, "data": {"root": "x", "few_shot_mode": "images"}})
