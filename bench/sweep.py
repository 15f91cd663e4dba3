"""A 4-job CPU sweep: how much each job costs beyond its training and testing.

    OMP_NUM_THREADS=1 python bench/sweep.py [--launcher basic|joblib] [--image-size 64]

Runs ``python -m anomaly.train -m model.n_features=8,16 seed=1,2`` (PaDiM, one synthetic category,
the data set generated beforehand, outside the timing) in one process and reads every job's
``manifest.json``: per job its wall time inside the engine and its fit + test seconds. Overhead per
job = (the sweep's wall time − Σ fit − Σ test) / 4: process start, imports, config, model and data
set-up, logging, checkpoints, metrics files.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--launcher", default="basic", choices=("basic", "joblib"))
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--logger", default="csv")
    args = parser.parse_args()
    from anomaly.data.synthetic import ensure_synthetic

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ensure_synthetic(root / "data" / "synthetic", seed=0, image_size=256)
        command = [sys.executable, "-m", "anomaly.train", "-m", "model.n_features=8,16", "seed=1,2",
                   "data.category=capsule", f"data.image_size={args.image_size}", "data.crop_size=null",
                   "data.num_workers=0", f"logger={args.logger}", f"hydra.sweep.dir={root / 'sweep'}"]
        if args.launcher == "joblib":
            command += ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True, env={**os.environ, "ANOMALY_ROOT": str(root)})
        wall = time.perf_counter() - start
        manifests = [json.loads(p.read_text()) for p in sorted((root / "sweep").glob("*/manifest.json"))]
    work = [sum(t.get("fit_s", 0) + t.get("test_s", 0) for t in m["timing"].values()) for m in manifests]
    inside = [m["wall_s"] - w for m, w in zip(manifests, work, strict=True)]
    print(f"{len(manifests)} jobs, launcher {args.launcher}, {args.image_size}² PaDiM, logger {args.logger}, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    print(f"sweep wall {wall:.1f} s; fit+test per job {sum(work) / len(work):.2f} s")
    print(f"overhead per job beyond fit+test: {(wall - sum(work)) / len(manifests):.2f} s "
          f"(of which inside the engine: {sum(inside) / len(inside):.2f} s; the rest is the process start, "
          "imports and Hydra, paid once per sweep with the basic launcher)")


if __name__ == "__main__":
    main()
