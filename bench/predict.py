"""Predict benchmark: images/s and peak RSS of PaDiM at 256² through every runtime, and anomalib 2.x's
``TorchInferencer`` on the same PaDiM (same backbone weights, layers, channels, size, training images).

Each path runs in a fresh process with ``OMP_NUM_THREADS=1`` (and one intra-op thread for ONNX Runtime
and OpenVINO): the machine is shared. Timed: file → decision for every test image of the category
(read, resize, normalise, model, threshold), after two warm-up images; one image per call (as
``TorchInferencer.predict``, which takes one image) and, for ours, batches of 8 (``anomaly.predict``'s
default). The run's thresholds are computed (and stored in its checkpoint) before timing starts.

    .venv/bin/python bench/predict.py                 # trains the 256² PaDiM run once into outputs/bench-runs/
    .venv/bin/python bench/predict.py --paths torch onnx --category wood

anomalib is a bench-only dependency (``make bench-deps`` puts it in .bench-deps/, never in .venv).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCH_DEPS = REPO / ".bench-deps"
RUNS = REPO / "outputs" / "bench-runs"  # ignored by git, like every run
LAYERS = ["blocks.1", "blocks.2", "blocks.4"]
PATHS = ("torch", "onnx", "openvino", "anomalib")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(REPO),
            "TRUST_REMOTE_CODE": "1"}


def train_run(root: Path, category: str) -> Path:
    """Our PaDiM at 256² (resize 256, no crop), offline EfficientNet-Lite0, one category."""
    run = RUNS / f"padim256_{category}"
    if not (run / "checkpoints" / "last.ckpt").is_file():
        subprocess.run([sys.executable, "-m", "anomaly.train", f"data.root={root}", f"data.category={category}",
                        "data.image_size=256", "data.crop_size=null", "logger=none", "callbacks.heatmaps.n_images=0",
                        f"hydra.run.dir={run}"], check=True, cwd=REPO, env=env())
    return run


def timed(predict_one, images: list[Path]) -> tuple[float, int]:
    for path in images[:2]:
        predict_one([path])
    start = time.perf_counter()
    predict_one(images)
    return time.perf_counter() - start, len(images)


def worker(path: str, run: Path, batch: int) -> dict:
    import torch

    torch.set_num_threads(1)
    images = sorted(_test_root(run).rglob("*.png"))
    if path == "anomalib":
        return anomalib_worker(run, images)
    from anomaly.deploy import load

    model = {"torch": run / "checkpoints" / "last.ckpt", "onnx": run / "export" / "padim.onnx",
             "openvino": run / "export" / "padim.xml"}[path]
    detector = load(model, threads=1)

    def predict(paths: list[Path]) -> None:
        for start in range(0, len(paths), batch):
            detector.predict([detector.preprocess.rgb(p) for p in paths[start:start + batch]])

    seconds, n = timed(predict, images)
    return {"path": path, "batch": batch, "images": n, "img_s": n / seconds, "peak_rss_mib": peak_rss_mib()}


def _test_root(run: Path) -> Path:
    import torch

    payload = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True, mmap=True)
    data = payload["anomaly_config"]["data"]
    return Path(data["root"]) / payload["anomaly_categories"][0] / "test"


def anomalib_worker(run: Path, images: list[Path]) -> dict:
    """anomalib's Padim with our backbone weights and channels, fitted on the same training images,
    exported with its own ``to_torch`` and run by ``TorchInferencer.predict`` (path → prediction)."""
    import numpy as np
    import torch

    sys.path.insert(0, str(BENCH_DEPS))
    from anomalib.deploy import TorchInferencer
    from anomalib.models import Padim as AnomalibPadim

    from anomaly.deploy.preprocess import Preprocess
    from anomaly.nn.backbone import FeatureExtractor, offline_state_dict
    from anomaly.nn.padim import PadimModel

    ours = PadimModel(FeatureExtractor("efficientnet_lite0", LAYERS, "none"), (256, 256), n_features=100)
    theirs = AnomalibPadim(backbone="efficientnet_lite0", layers=LAYERS, pre_trained=False, n_features=100)
    state = offline_state_dict("efficientnet_lite0")
    extractor = theirs.model.feature_extractor.feature_extractor
    extractor.load_state_dict({key: state[key] for key in extractor.state_dict()})
    theirs.model.idx.copy_(torch.cat([index + offset for index, offset in
                                      zip(ours.layer_indices, [0, 24, 64], strict=True)]))
    preprocess = Preprocess(256, None)
    train = sorted((_test_root(run).parent / "train" / "good").glob("*.png"))
    theirs.model.train()
    with torch.no_grad():
        for start in range(0, len(train), 32):
            theirs.model(torch.from_numpy(np.stack([preprocess(p) for p in train[start:start + 32]])))
    theirs.model.fit()
    theirs.eval()
    folder = Path(tempfile.mkdtemp())
    exported = theirs.to_torch(export_root=folder)
    inferencer = TorchInferencer(path=exported, device="cpu")

    def predict(paths: list[Path]) -> None:
        for p in paths:
            inferencer.predict(p)

    seconds, n = timed(predict, images)
    return {"path": "anomalib", "batch": 1, "images": n, "img_s": n / seconds, "peak_rss_mib": peak_rss_mib()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--paths", nargs="+", default=list(PATHS), choices=PATHS)
    parser.add_argument("--root", type=Path, default=REPO / "data" / "synthetic")
    parser.add_argument("--category", default="capsule")
    parser.add_argument("--repeat", type=int, default=3, help="rounds over all paths (median reported)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--run", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.run, args.batch)))
        return
    if "anomalib" in args.paths and not (BENCH_DEPS / "anomalib").is_dir():
        print("anomalib not installed: run `make bench-deps`; measuring ours only.")
        args.paths = [p for p in args.paths if p != "anomalib"]
    run = train_run(args.root, args.category)
    prepare = (f"from anomaly.deploy import load; from anomaly.deploy.export import export_checkpoints; "
               f"load({str(run)!r}); [export_checkpoints({str(run)!r}, f, output={str(run / 'export')!r} + s) "
               f"for f, s in (('onnx', '/padim.onnx'), ('openvino', '/padim.xml'))]")
    # Thresholds into the checkpoint and the exported files, outside the timed processes.
    subprocess.run([sys.executable, "-c", prepare], check=True, cwd=REPO, env=env(), capture_output=True)
    jobs = [(p, 1) for p in args.paths] + [(p, 8) for p in args.paths if p != "anomalib"]
    print("OMP_NUM_THREADS=1 for every path (one intra-op thread for ONNX Runtime / OpenVINO too); "
          f"{args.repeat} rounds, paths interleaved, median img/s")
    rows: dict[tuple[str, int], list[dict]] = {}
    for _ in range(args.repeat):  # round robin: a busy spell of the shared machine hits every path alike
        for path, batch in jobs:
            out = subprocess.run([sys.executable, __file__, "--worker", path, "--batch", str(batch), "--run",
                                  str(run)], capture_output=True, text=True, cwd=REPO, env=env())
            if out.returncode != 0:
                print(f"{path}: failed\n{out.stderr[-1500:]}")
                continue
            row = json.loads(out.stdout.strip().splitlines()[-1])
            rows.setdefault((path, batch), []).append(row)
            print(f"  {row['path']:>9} batch {row['batch']}  {row['img_s']:6.2f} img/s  peak RSS "
                  f"{row['peak_rss_mib']:6.0f} MiB", flush=True)
    print("| path | batch | img/s (median) | range | peak RSS MiB |\n| --- | --- | --- | --- | --- |")
    for (path, batch), found in rows.items():
        speeds = sorted(r["img_s"] for r in found)
        print(f"| {path} | {batch} | {statistics.median(speeds):.2f} | {speeds[0]:.2f}–{speeds[-1]:.2f} | "
              f"{max(r['peak_rss_mib'] for r in found):.0f} |")


if __name__ == "__main__":
    main()
