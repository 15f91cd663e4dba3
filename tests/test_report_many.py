"""The report on 100 generated runs (bench/report.py's generator): every row, every group of seeds.

Its time and memory are measured by ``python bench/report.py`` (README, notes/scale.md), not here.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "report.py"


def test_report_on_100_runs_groups_ten_seeds_per_setting(tmp_path: Path) -> None:
    from anomaly.reporting.build import make_report

    spec = importlib.util.spec_from_file_location("bench_report", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.generate(tmp_path / "sweep", runs=100, categories=4)
    report = make_report(tmp_path / "sweep", plots=False)
    assert len(report["runs"]) == 100 and not report["skipped"]
    assert len(report["rows"]) == 100 * 5  # 4 categories + the run's mean
    assert report["parameters"] == ["model.lr"]  # swept; model (the method) and seed are columns
    groups = report["summary"]
    assert len(groups) == 2 * 5 * 5 and all(g["n"] == 10 for g in groups)
    one = next(g for g in groups if g["method"] == "padim" and g["category"] == "category_0")
    values = [r["image_auroc"] for r in report["rows"] if r["method"] == "padim" and r["category"] == "category_0"
              and r["model.lr"] == one["model.lr"]]
    assert one["image_auroc"] == pytest.approx(sum(values) / 10)
