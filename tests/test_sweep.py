"""Sweeps in-process (Hydra's basic and Optuna sweepers), their resume, and the report on them.

One 2×2 basic sweep (model.n_features × seed, tiny PaDiM) is shared by the module; the resume tests
work on copies of it, so they never change what the other tests read.
"""

from __future__ import annotations

import csv
import json
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra

pytestmark = pytest.mark.one_thread

TINY = ["data.category=capsule", "data.image_size=64", "data.crop_size=null", "data.num_workers=0",
        "data.prepare=null", "callbacks.heatmaps.n_images=0", "logger=none"]
GRID = ["model.n_features=8,16", "seed=1,2"]


def hydra_main(argv: list[str], root: Path) -> None:
    """``python -m anomaly.train <argv>`` in this process (ANOMALY_ROOT=root)."""
    from anomaly.train import main

    GlobalHydra.instance().clear()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ANOMALY_ROOT", str(root))
        patch.setattr(sys, "argv", ["anomaly.train", *argv])
        main()
    GlobalHydra.instance().clear()


@pytest.fixture(scope="module")
def sweep(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``python -m anomaly.train -m model.n_features=8,16 seed=1,2`` on one tiny category."""
    work = tmp_path_factory.mktemp("sweep")
    hydra_main(["-m", *GRID, f"data.root={synthetic_root}", *TINY, f"hydra.sweep.dir={work / 'sweep'}"], work)
    return work / "sweep"


def jobs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and p.name[0].isdigit())


def test_basic_sweep_writes_one_run_per_job_with_manifest(sweep: Path) -> None:
    found = jobs(sweep)
    assert [p.name for p in found] == [f"{n}_padim_synthetic" for n in range(4)]
    seen = set()
    for job in found:
        manifest = json.loads((job / "manifest.json").read_text())
        metrics = json.loads((job / "metrics.json").read_text())
        assert manifest["status"] == "finished" and manifest["sweep"]["dir"] == str(sweep)
        assert manifest["config"]["model"]["n_features"] == metrics["config"]["model"]["n_features"]
        assert manifest["seed"] == metrics["seed"] and manifest["choices"]["model"] == "padim"
        assert manifest["git"]["commit"] is None or len(manifest["git"]["commit"]) == 40
        assert manifest["data"]["fingerprint"]["files"] > 0 and manifest["data"]["split_sizes"]["capsule"]["test"] > 0
        assert manifest["timing"]["all"]["fit_s"] > 0 and manifest["wall_s"] >= manifest["timing"]["all"]["fit_s"]
        curves = json.loads((job / "curves.json").read_text())["capsule"]
        assert set(curves) == {"image_roc", "pixel_roc", "pixel_pro"}
        assert len(curves["pixel_roc"]["x"]) <= 4 * 256 + 2  # bounded, whatever the number of pixels
        seen.add((manifest["config"]["model"]["n_features"], manifest["seed"]))
    assert seen == {(8, 1), (8, 2), (16, 1), (16, 2)}


def test_report_has_one_row_per_run_and_mean_std_over_seeds(sweep: Path, tmp_path: Path) -> None:
    from anomaly.report import main

    main([str(sweep), f"output={tmp_path}"])
    with (tmp_path / "runs.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 4 and {r["model.n_features"] for r in rows} == {"8", "16"}
    assert {r["seed"] for r in rows} == {"1", "2"} and all(float(r["fit_s"]) > 0 for r in rows)
    with (tmp_path / "summary.csv").open() as handle:
        summary = list(csv.DictReader(handle))
    assert len(summary) == 2 and all(r["n"] == "2" and r["seeds"] == "1 2" for r in summary)
    for group in summary:  # the mean over the two seeds' rows, and their sample std
        values = [float(r["image_auroc"]) for r in rows if r["model.n_features"] == group["model.n_features"]]
        assert float(group["image_auroc"]) == pytest.approx(sum(values) / 2)
        assert float(group["image_auroc_std"]) == pytest.approx(abs(values[0] - values[1]) / 2 ** 0.5, abs=1e-9)
    text = (tmp_path / "report.md").read_text()
    assert "## Mean ± std over seeds" in text and " ± " in text and "swept: model.n_features" in text
    plots = sorted(p.name for p in (tmp_path / "plots").glob("*.png"))
    assert plots == ["curves_capsule.png", "methods_by_category.png", "metric_vs_model.n_features.png"]


def test_report_skips_unfinished_runs_and_says_why(sweep: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from anomaly.report import main

    partial = tmp_path / "partial"
    shutil.copytree(sweep, partial)
    (partial / "3_padim_synthetic" / "metrics.json").unlink()
    main([str(partial), "plots=false"])
    out = capsys.readouterr().out
    assert "3 rows from 3 runs" in out and "3_padim_synthetic: no metrics.json (unfinished" in out
    assert "3_padim_synthetic" in (partial / "report.md").read_text().split("## Skipped")[1]


def test_report_on_a_folder_without_runs_is_one_sentence(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from anomaly.report import main

    with pytest.raises(SystemExit) as stopped:
        main([str(tmp_path)])
    assert stopped.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("Error: ") and "holds no finished run" in err and len(err.splitlines()) == 1


@pytest.fixture
def killed(sweep: Path, tmp_path: Path) -> Iterator[Path]:
    """A copy of the sweep as if killed during job 2: job 2 has its manifest but no metrics, job 3 never started."""
    copy = tmp_path / "sweep"
    shutil.copytree(sweep, copy)
    (copy / "2_padim_synthetic" / "metrics.json").unlink()
    shutil.rmtree(copy / "3_padim_synthetic")
    yield copy


def test_resumed_sweep_runs_only_the_unfinished_jobs(killed: Path, synthetic_root: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    before = {n: (killed / f"{n}_padim_synthetic" / "metrics.json").stat().st_mtime_ns for n in (0, 1)}
    hydra_main(["-m", *GRID, f"data.root={synthetic_root}", *TINY, "resume=true", f"hydra.sweep.dir={killed}"],
               killed.parent)
    out = capsys.readouterr().out
    assert out.count("has finished (metrics.json); skipped.") == 2
    for n in (0, 1):  # untouched
        assert (killed / f"{n}_padim_synthetic" / "metrics.json").stat().st_mtime_ns == before[n]
    for n in (2, 3):  # run now
        assert json.loads((killed / f"{n}_padim_synthetic" / "manifest.json").read_text())["status"] == "finished"
        assert (killed / f"{n}_padim_synthetic" / "metrics.json").is_file()


def test_resume_after_the_config_changed_names_the_keys_and_refuses(killed: Path, synthetic_root: Path,
                                                                     capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as stopped:
        hydra_main(["-m", *GRID, f"data.root={synthetic_root}", *TINY, "model.sigma=2.0", "resume=true",
                    f"hydra.sweep.dir={killed}"], killed.parent)
    assert stopped.value.code == 1
    err = capsys.readouterr().err
    assert "resume=true:" in err and "model.sigma (4.0 -> 2.0)" in err
    assert not (killed / "3_padim_synthetic").exists()  # refused before running anything


def test_optuna_search_writes_its_study_and_a_rerun_adds_trials(synthetic_root: Path, tmp_path: Path) -> None:
    import optuna

    folder = tmp_path / "optuna"
    args = ["hparams_search=padim_optuna", f"data.root={synthetic_root}", *TINY, f"hydra.sweep.dir={folder}"]
    hydra_main([*args, "hydra.sweeper.n_trials=2"], tmp_path)
    storage = f"sqlite:///{folder / 'optuna.db'}"
    study = optuna.load_study(study_name="padim", storage=storage)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    for trial in study.trials:  # the value is the validation metric of that trial's folder
        metrics = json.loads((folder / f"{trial.number}_padim_synthetic" / "metrics.json").read_text())
        assert trial.value == pytest.approx(metrics["validation"]["mean"]["image_auroc"])
        assert metrics["config"]["model"]["n_features"] == trial.params["model.n_features"]
    hydra_main([*args, "hydra.sweeper.n_trials=1"], tmp_path)  # continue the search
    study = optuna.load_study(study_name="padim", storage=storage)
    assert len(study.trials) == 3 and study.trials[2].state.name == "COMPLETE"
    assert sorted(p.name for p in jobs(folder)) == [f"{n}_padim_synthetic" for n in range(3)]  # numbered on
