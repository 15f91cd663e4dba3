"""PaDiM benchmark: ours vs anomalib 2.x on the same data, backbone, channels and image size.

Prints fit time, test images/s, peak RSS and AUROC for each implementation and training-set size
(each measurement in a fresh process, so peak RSS is its own). Both see the same preprocessed
batches (synthetic set, resize 256 → crop 224, offline EfficientNet-Lite0 blocks 1/2/4, the same
100 random channels); only model compute is timed, not image decoding.

    .venv/bin/python bench/padim.py                      # ours and anomalib, 50 and 200 images
    .venv/bin/python bench/padim.py --impl ours --n-train 50 200 400

anomalib is a bench-only dependency, installed beside the project, never into .venv:
    .venv/bin/pip install --no-deps --target .bench-deps anomalib==2.7.0 einops FrEIA scikit-image \
        imageio tifffile lazy_loader jsonargparse matplotlib pandas ...
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCH_DEPS = REPO / ".bench-deps"
LAYERS = ["blocks.1", "blocks.2", "blocks.4"]


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def data(root: Path, n_train: int, category: str | None):
    """Train batches (first ``n_train`` normal images, repeated if needed) and the test loader."""
    from anomaly.data.datamodule import AnomalyDataModule
    from anomaly.data.layouts import MVTecLayout
    from anomaly.data.synthetic import ensure_synthetic

    ensure_synthetic(root, seed=0, image_size=256, n_train=200)
    dm = AnomalyDataModule(root, MVTecLayout(), category=category or "all", image_size=256, crop_size=224,
                           batch_size=32, eval_batch_size=32)
    dm = dm.for_category(category or dm.categories[0])
    train = dm.dataset("train")
    train.records = [train.records[i % len(train.records)] for i in range(n_train)]
    from torch.utils.data import DataLoader

    return DataLoader(train, batch_size=32), dm.test_dataloader(), dm.categories


def build(impl: str):
    """(embed+accumulate step, finalize, forward) of one implementation, with identical features."""
    import torch

    from anomaly.nn.backbone import FeatureExtractor
    from anomaly.nn.padim import PadimModel

    ours = PadimModel(FeatureExtractor("efficientnet_lite0", LAYERS, "offline"), (224, 224), n_features=100)
    if impl == "ours":
        def step(image):
            ours.gaussian.accumulate(ours.embed(image))

        def forward(image):
            return ours(image)

        return step, ours.gaussian.finalize, forward

    sys.path.insert(0, str(BENCH_DEPS))
    from anomalib.models.image.padim.torch_model import PadimModel as AnomalibPadim

    theirs = AnomalibPadim(backbone="efficientnet_lite0", layers=LAYERS, pre_trained=False, n_features=100)
    from anomaly.nn.backbone import offline_state_dict

    state = offline_state_dict("efficientnet_lite0")  # the same ImageNet weights, into timm's full model
    extractor = theirs.feature_extractor.feature_extractor
    extractor.load_state_dict({key: state[key] for key in extractor.state_dict()})
    theirs.idx.copy_(torch.cat([index + offset for index, offset in
                                zip(ours.layer_indices, [0, 24, 64], strict=True)]))
    theirs.train()

    def step(image):
        theirs(image)

    def finalize():
        theirs.fit()
        theirs.eval()

    def forward(image):
        out = theirs(image)
        return out.anomaly_map, out.pred_score

    return step, finalize, forward


def worker(impl: str, n_train: int, root: Path, category: str | None, threads: int) -> dict:
    """One measurement in this process."""
    import torch

    from anomaly.metrics import AnomalyMetrics

    torch.set_num_threads(threads)
    train_loader, test_loader, categories = data(root, n_train, category)
    step, finalize, forward = build(impl)
    fit_s = 0.0
    with torch.no_grad():
        for batch in train_loader:
            start = time.perf_counter()
            step(batch["image"])
            fit_s += time.perf_counter() - start
        start = time.perf_counter()
        finalize()
        fit_s += time.perf_counter() - start
        fit_rss = peak_rss_mib()
        metrics = AnomalyMetrics(categories, metrics=("image_auroc", "pixel_auroc"))
        test_s, n_test = 0.0, 0
        for batch in test_loader:
            start = time.perf_counter()
            anomaly_map, score = forward(batch["image"])
            test_s += time.perf_counter() - start
            n_test += len(score)
            metrics.update(batch["category"], anomaly_map, score, batch["mask"], batch["label"])
    result = metrics.compute()[categories[0]]
    return {"impl": impl, "n_train": n_train, "fit_s": fit_s, "test_img_s": n_test / test_s,
            "fit_peak_rss_mib": fit_rss, "peak_rss_mib": peak_rss_mib(), **result}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--impl", nargs="+", default=["ours", "anomalib"], choices=["ours", "anomalib"])
    parser.add_argument("--n-train", nargs="+", type=int, default=[50, 200])
    parser.add_argument("--root", type=Path, default=REPO / "data" / "bench_synthetic")
    parser.add_argument("--category", default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.impl[0], args.n_train[0], args.root, args.category, args.threads)))
        return
    if "anomalib" in args.impl and not (BENCH_DEPS / "anomalib").is_dir():
        print(f"anomalib not installed: run the command in this script's docstring ({__file__}); measuring ours only.")
        args.impl = [i for i in args.impl if i != "anomalib"]
    rows = []
    for n_train in args.n_train:
        for impl in args.impl:
            command = [sys.executable, __file__, "--worker", "--impl", impl, "--n-train", str(n_train),
                       "--root", str(args.root), "--threads", str(args.threads)]
            if args.category:
                command += ["--category", args.category]
            out = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
            if out.returncode != 0:
                print(out.stderr[-2000:])
                continue
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            row = rows[-1]
            print(f"{row['impl']:>9} n_train={row['n_train']:>4}  fit {row['fit_s']:7.2f} s  "
                  f"test {row['test_img_s']:6.2f} img/s  fit peak RSS {row['fit_peak_rss_mib']:7.0f} MiB  "
                  f"peak RSS {row['peak_rss_mib']:7.0f} MiB  image AUROC {row['image_auroc']:.4f}  "
                  f"pixel AUROC {row['pixel_auroc']:.4f}", flush=True)
    by = {(r["impl"], r["n_train"]): r for r in rows}
    for n_train in args.n_train:
        if ("ours", n_train) in by and ("anomalib", n_train) in by:
            a, b = by[("ours", n_train)], by[("anomalib", n_train)]
            print(f"n_train={n_train}: throughput ×{a['test_img_s'] / b['test_img_s']:.2f}, "
                  f"fit ×{b['fit_s'] / a['fit_s']:.2f} faster, peak RSS {a['peak_rss_mib'] - b['peak_rss_mib']:+.0f} MiB, "
                  f"ΔAUROC {a['image_auroc'] - b['image_auroc']:+.4f}")


if __name__ == "__main__":
    main()
