"""``python -m anomaly.report`` on many generated runs: wall time and peak memory.

    python bench/report.py [--runs 100] [--categories 4] [--no-plots]

Writes ``--runs`` fake run folders (metrics.json, manifest.json, curves.json of the sizes the engine
writes: ≤ 514 points per pixel curve) into a temporary sweep folder — 2 methods × 5 values of one
swept parameter × seeds — then runs the report in a child process and prints its wall time and peak RSS.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

METRICS = ("image_auroc", "image_ap", "image_f1max", "pixel_auroc", "pixel_ap", "pixel_f1max", "pixel_aupro")


def curve(rng: np.random.Generator, n: int) -> dict[str, list[float]]:
    x = np.sort(np.concatenate([[0.0], rng.random(n - 2), [1.0]]))
    y = np.sort(np.concatenate([[0.0], rng.random(n - 2), [1.0]]))
    return {"x": x.round(6).tolist(), "y": y.round(6).tolist()}


def generate(folder: Path, runs: int, categories: int, seed: int = 0) -> None:
    """``runs`` run folders as ``anomaly.train -m`` writes them."""
    rng = np.random.default_rng(seed)
    names = [f"category_{i}" for i in range(categories)]
    for n in range(runs):
        method, value, run_seed = ("padim", "diad")[n % 2], (n // 2) % 5, n // 10
        job = folder / f"{n}_{method}_synthetic"
        job.mkdir(parents=True)
        per = {c: {m: float(rng.random()) for m in METRICS} for c in names}
        mean = {m: float(np.mean([per[c][m] for c in names])) for m in METRICS}
        overrides = [f"model={method}", f"model.lr={10 ** -(value + 3)}", f"seed={run_seed}"]
        (job / "metrics.json").write_text(json.dumps({
            "method": f"anomaly.models.{method}.X", "setting": "separate", "seed": run_seed, "categories": per,
            "mean": mean, "timing": {c: {"fit_s": 10.0, "test_s": 2.0} for c in names}}))
        (job / "manifest.json").write_text(json.dumps({
            "status": "finished", "seed": run_seed, "overrides": overrides,
            "choices": {"model": method, "data": "synthetic"}, "config": {"seed": run_seed}}))
        (job / "curves.json").write_text(json.dumps({c: {"image_roc": curve(rng, 80), "pixel_roc": curve(rng, 514),
                                                         "pixel_pro": curve(rng, 514)} for c in names}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--categories", type=int, default=4)
    parser.add_argument("--no-plots", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        sweep = Path(tmp) / "sweep"
        generate(sweep, args.runs, args.categories)
        command = [sys.executable, "-m", "anomaly.report", str(sweep), *(["plots=false"] if args.no_plots else [])]
        start = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - start
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        if result.returncode:
            sys.exit(result.stderr)
        rows = len((sweep / "runs.csv").read_text().splitlines()) - 1
        plots = len(list((sweep / "plots").glob("*.png"))) if (sweep / "plots").is_dir() else 0
    print(f"report: {args.runs} runs × {args.categories} categories → {rows} rows, {plots} plots: "
          f"{wall:.2f} s wall (process start included), peak RSS {peak:.0f} MiB")


if __name__ == "__main__":
    main()
