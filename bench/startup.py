"""Seconds from process start to the first training batch (PaDiM on the synthetic set).

    python bench/startup.py                       # this checkout
    python bench/startup.py --before /tmp/old     # side by side with another checkout of the project

Each run is a fresh `python -m anomaly.train` process; a probe callback prints the time of the first
training batch and ends the process. The synthetic data set is generated once before timing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ARGS = ["data.category=capsule", "data.num_workers=0", "logger=none", "+callbacks.first_batch._target_=startup_probe.FirstBatch"]


def once(repo: Path, root: Path, run_dir: Path) -> float:
    env = {**os.environ, "ANOMALY_ROOT": str(root), "PYTHONPATH": f"{repo}{os.pathsep}{REPO / 'bench'}"}
    start = time.time()
    result = subprocess.run([sys.executable, "-m", "anomaly.train", *ARGS, f"hydra.run.dir={run_dir}"], cwd=root,
                            env=env, capture_output=True, text=True, timeout=900)
    stamps = [line for line in result.stdout.splitlines() if line.startswith("FIRST_BATCH ")]
    if not stamps:
        raise SystemExit(f"{repo}: no training batch reached:\n{result.stderr[-2000:]}")
    return float(stamps[0].split()[1]) - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, help="another checkout to time side by side")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    trees = [("this checkout", REPO)] + ([("before", args.before)] if args.before else [])
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        once(REPO, root, root / "warmup")  # generates the synthetic data set once
        times: dict[str, list[float]] = {label: [] for label, _ in trees}
        for i in range(args.repeats):  # interleaved, so machine load hits both alike
            for label, repo in trees:
                times[label].append(once(repo, root, root / f"{label.replace(' ', '_')}_{i}"))
    print(f"{'code':<16}{'median s':>10}{'min s':>8}{'max s':>8}   (process start → first training batch, "
          f"{args.repeats} runs)")
    for label, values in times.items():
        print(f"{label:<16}{statistics.median(values):>10.2f}{min(values):>8.2f}{max(values):>8.2f}")


if __name__ == "__main__":
    main()
