"""The report's plots say what they show: ``metric_vs_<parameter>`` has one line per category and method (never
one line through several), and ``methods_by_category``'s error bars name what they spread over."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from matplotlib.figure import Figure

BENCH = Path(__file__).resolve().parents[1] / "bench" / "report.py"


def figures_of(folder: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Figure]:
    """The report's figures by file stem, kept open instead of written."""
    import anomaly.reporting.plots as plots
    from anomaly.reporting.build import make_report

    kept: dict[str, Figure] = {}

    def keep(fig: Figure, path: Path) -> Path:
        kept[path.stem] = fig
        return path

    monkeypatch.setattr(plots, "save", keep)
    make_report(folder, plots=True)
    return kept


def test_lines_per_category_and_spread_labels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = importlib.util.spec_from_file_location("bench_report", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.generate(tmp_path / "sweep", runs=20, categories=3)  # padim, diad x model.lr x seeds; 3 categories
    figures = figures_of(tmp_path / "sweep", monkeypatch)

    panel = figures["metric_vs_model.lr"].axes[0]
    labels = sorted(line.get_label() for line in panel.get_lines())
    assert labels == sorted(f"{method} category_{i}" for method in ("padim", "diad") for i in range(3))
    padim_0 = next(line for line in panel.get_lines() if line.get_label() == "padim category_0")
    assert len(padim_0.get_xdata()) == 5  # the five learning rates, each the mean over that line's seeds

    legend = [text.get_text() for text in figures["methods_by_category"].axes[0].get_legend().get_texts()]
    assert legend == ["diad (± std over seeds and model.lr)", "padim (± std over seeds and model.lr)"]


def test_a_spread_over_seeds_alone_says_seeds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from anomaly.reporting.build import spread_over
    from anomaly.reporting.runs import Run

    def run(seed: int, lr: str) -> Run:
        return Run(folder=tmp_path / f"{seed}_{lr}", method="padim", data="synthetic", setting="separate", seed=seed,
                   overrides={"model.lr": lr}, categories={"wood": {"image_auroc": 0.9}}, mean={}, pooled={},
                   timing={})

    assert spread_over([run(0, "0.1"), run(1, "0.1")], ["model.lr"]) == "seeds"
    assert spread_over([run(0, "0.1"), run(1, "0.2")], ["model.lr"]) == "seeds and model.lr"
