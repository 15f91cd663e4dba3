"""PaDiM benchmark: ours vs anomalib 2.x on the same data, backbone, channels and image size.

Prints fit time, test images/s, peak RSS and AUROC for each implementation and training-set size
(each measurement in a fresh process, so peak RSS is its own). Both see the same preprocessed
batches (synthetic set, resize 256 → crop 224, offline EfficientNet-Lite0 blocks 1/2/4, the same
100 random channels); only model compute is timed, not image decoding.

    .venv/bin/python bench/padim.py                      # ours and anomalib, 50 and 200 images
    .venv/bin/python bench/padim.py --impl ours --n-train 50 200 400
    .venv/bin/python bench/padim.py --memory               # paper preset WR50-Rd550: peak RSS and time

``--memory`` builds ``experiment=padim_wr50`` (WR50-Rd550 at 224², random weights:
``model.backbone.weights=none``, no download) and fits it on a synthetic 60-image input in a fresh
process; it prints peak RSS (``ru_maxrss``) and the fit and test times. ``--save-maps`` writes the
test maps to an .npz, ``--compare-maps`` reports the largest difference to maps saved before.

anomalib is a bench-only dependency, installed beside the project, never into .venv: ``make bench-deps``.
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


def synthetic_batch(index: int, size: int, batch_size: int):
    """A deterministic batch of smooth random ImageNet-normalised images (never all kept in memory)."""
    import torch
    import torch.nn.functional as F

    generator = torch.Generator().manual_seed(1000 + index)
    coarse = torch.rand(batch_size, 3, size // 8, size // 8, generator=generator)
    image = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return (image - mean) / std


def memory_worker(n_images: int, experiment: str, threads: int, save: Path | None, compare: Path | None) -> dict:
    """Fit the paper preset with random weights on ``n_images`` synthetic images; peak RSS and times."""
    import numpy as np
    import torch
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    import anomaly.config.resolvers  # noqa: F401
    from anomaly.conf import CONF_DIR

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment={experiment}", "model.backbone.weights=none"])
    size = int(cfg.data.crop_size or cfg.data.image_size)
    batch_size = int(cfg.data.batch_size)
    node = OmegaConf.to_container(cfg.model, resolve=False)
    node["input_size"] = size
    module = instantiate(node)
    model = module.model
    build_rss = peak_rss_mib()
    start = time.perf_counter()
    module.on_train_epoch_start()
    with torch.no_grad():
        done, index = 0, 0
        while done < n_images:
            images = synthetic_batch(index, size, min(batch_size, n_images - done))
            module.training_step({"image": images}, index)
            done, index = done + len(images), index + 1
        accumulate_s = time.perf_counter() - start
        model.gaussian.finalize()
    fit_s = time.perf_counter() - start
    fit_rss = peak_rss_mib()
    start = time.perf_counter()
    with torch.no_grad():
        anomaly_map, score = model(synthetic_batch(10_000, size, 4))
    test_s = time.perf_counter() - start
    maps = anomaly_map.double().numpy()
    row = {"experiment": experiment, "backbone": cfg.model.backbone.name, "n_features": int(cfg.model.n_features),
           "n_images": n_images, "size": size, "build_peak_rss_mib": build_rss, "accumulate_s": accumulate_s,
           "fit_s": fit_s, "fit_peak_rss_mib": fit_rss, "test_s_4_images": test_s, "peak_rss_mib": peak_rss_mib()}
    if save is not None:
        np.savez(save, maps=maps, scores=score.double().numpy())
    if compare is not None:
        before = np.load(compare)["maps"]
        row["max_rel_map_diff"] = float(np.abs(maps - before).max() / np.abs(before).max())
        row["max_map_diff"] = float(np.abs(maps - before).max())
    return row


def memory(args: argparse.Namespace) -> None:
    """Run ``memory_worker`` in a fresh process (its own peak RSS) and print the figures."""
    for n_images in args.n_train:
        command = [sys.executable, __file__, "--worker", "--memory", "--n-train", str(n_images),
                   "--experiment", args.experiment, "--threads", str(args.threads)]
        if args.save_maps:
            command += ["--save-maps", str(args.save_maps)]
        if args.compare_maps:
            command += ["--compare-maps", str(args.compare_maps)]
        out = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
        if out.returncode != 0:
            print(out.stderr[-2000:])
            continue
        row = json.loads(out.stdout.strip().splitlines()[-1])
        line = (f"{row['experiment']} ({row['backbone']}, Rd{row['n_features']}, {row['size']}²) "
                f"n_images={row['n_images']}: fit {row['fit_s']:.1f} s (accumulate {row['accumulate_s']:.1f} s), "
                f"test 4 images {row['test_s_4_images']:.1f} s, peak RSS after build "
                f"{row['build_peak_rss_mib'] / 1024:.2f} GiB, fit {row['fit_peak_rss_mib'] / 1024:.2f} GiB, "
                f"overall {row['peak_rss_mib'] / 1024:.2f} GiB")
        if "max_rel_map_diff" in row:
            line += f", maps vs saved: max |Δ| {row['max_map_diff']:.3g} ({row['max_rel_map_diff']:.3g} of max)"
        print(line, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--impl", nargs="+", default=["ours", "anomalib"], choices=["ours", "anomalib"])
    parser.add_argument("--n-train", nargs="+", type=int, default=[50, 200])
    parser.add_argument("--root", type=Path, default=REPO / "data" / "bench_synthetic")
    parser.add_argument("--category", default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--memory", action="store_true",
                        help="peak RSS and time of the paper preset with random weights (default 60 images)")
    parser.add_argument("--experiment", default="padim_wr50", help="experiment preset for --memory")
    parser.add_argument("--save-maps", type=Path, default=None, help="--memory: write the test maps here (.npz)")
    parser.add_argument("--compare-maps", type=Path, default=None, help="--memory: compare with maps saved before")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory:
        if args.n_train == parser.get_default("n_train"):
            args.n_train = [60]
        if args.worker:
            print(json.dumps(memory_worker(args.n_train[0], args.experiment, args.threads, args.save_maps,
                                           args.compare_maps)))
        else:
            memory(args)
        return
    if args.worker:
        print(json.dumps(worker(args.impl[0], args.n_train[0], args.root, args.category, args.threads)))
        return
    if "anomalib" in args.impl and not (BENCH_DEPS / "anomalib").is_dir():
        print("anomalib not installed: run `make bench-deps` (installs it into .bench-deps/); measuring ours only.")
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
