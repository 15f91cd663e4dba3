"""Pooling variants of the dense flow on cached features, scored on the VALIDATION split only.

How the CPU presets' ``model.cells`` was chosen (notes/flow.md): EfficientNet-Lite0 blocks.4+6 at
256/192/128 px (offline weights), pooled per image as the global mean (``mean``, the paper), the global
max (``max``), both concatenated (``meanmax``) or a g×g grid of cells (``g2``, ``g4``, ``g8``: every cell a
flow sample, the image's −log p its worst cell); ``g4pos``/``g8pos``/``g16pos`` add the cell's 32-dim sinusoidal
position code as the couplings' condition (CFlow-style, ``model.position_dim``). A 3-block dense flow
(width 256, Adam 1e-3, batch 16 images) is fitted for 60 epochs on the training images' features; the
validation image AUROC is printed every 10.

    OMP_NUM_THREADS=1 python bench/flow_pooling.py perlin          # the default validation anomalies
    OMP_NUM_THREADS=1 python bench/flow_pooling.py cutpaste_scar   # small ones (the presets' choice)
    OMP_NUM_THREADS=1 python bench/flow_pooling.py cutpaste_scar --variants g4 g4pos g8pos --categories capsule
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_module
from torch import Tensor

from anomaly.engine.build import build_datamodule
from anomaly.metrics import ImageAUROC
from anomaly.nn.backbone import FeatureExtractor
from anomaly.nn.flows import Flow, FlowDensityModel

VARIANTS = ("mean", "max", "meanmax", "g2", "g4", "g4pos", "g8", "g8pos", "g16pos")
POSITION_DIM = 32


def grid(variant: str) -> int:
    """Cells per side of a grid variant (``g4pos`` → 4), 0 for the global poolings."""
    return int(variant[1:].removesuffix("pos")) if variant.startswith("g") else 0


def pooled(backbone: FeatureExtractor, loader, variants: list[str], scales: list[int]) -> tuple[dict[str, Tensor], Tensor]:
    """Every variant's features (B×D, or B×cells×D for grids) and the labels of a loader."""
    grids = sorted({grid(v) for v in variants} - {0})
    per_batch: dict[str, list[Tensor]] = {}
    labels = []
    with torch.no_grad():
        for batch in loader:
            image, per = batch["image"], {key: [] for key in ["mean", "max"] + [f"g{g}" for g in grids]}
            labels.append(batch["label"])
            for side in scales:
                x = image if side == image.shape[-1] else F.interpolate(image, size=(side, side), mode="bilinear",
                                                                       antialias=side < image.shape[-1])
                for f in backbone(x).values():
                    per["mean"].append(f.mean((2, 3)))
                    per["max"].append(f.amax((2, 3)))
                    for g in grids:
                        per[f"g{g}"].append(F.adaptive_avg_pool2d(f, g).flatten(2))
            for variant in variants:
                if variant == "meanmax":
                    value = torch.cat(per["mean"] + per["max"], 1)
                elif grid(variant):
                    value = torch.cat(per[f"g{grid(variant)}"], 1).transpose(1, 2)
                else:
                    value = torch.cat(per[variant], 1)
                per_batch.setdefault(variant, []).append(value)
    return {v: torch.cat(p) for v, p in per_batch.items()}, torch.cat(labels)


def fit_and_validate(variant: str, backbone: FeatureExtractor, train: Tensor, val: Tensor, labels: Tensor,
                     scales: list[int], epochs: int = 60) -> list[float]:
    """Fit the flow on cached features for ``epochs``; the validation image AUROC every 10 epochs. The
    cells' −log p and the worst-cell score are ``FlowDensityModel``'s own (as in training)."""
    torch.manual_seed(0)
    position_dim = POSITION_DIM if variant.endswith("pos") else 0
    flow = Flow(train.shape[-1], "dense", 3, [256, 256], 2.0, 3, 0.0, 0, position_dim)
    model = FlowDensityModel(backbone, flow, scales, n_views=1, cells=max(grid(variant), 1))
    optimizer = torch.optim.Adam(flow.parameters(), 1e-3)
    history = []
    for epoch in range(epochs):
        flow.train()
        order = torch.randperm(train.shape[0])
        for i in range(0, len(order), 16):
            loss = model.cells_nll(train[order[i:i + 16]]).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        if epoch % 10 == 9:
            flow.eval()
            auroc = ImageAUROC()
            with torch.no_grad():
                auroc.update(model.features_nll(val), labels)
            history.append(round(float(auroc.compute()), 3))
    return history


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("val_synthesis", nargs="?", default="perlin", help="synthesis@data.val_synthesis option")
    parser.add_argument("--categories", nargs="+", default=["capsule", "fabric", "washer", "wood"])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--layers", nargs="+", default=["blocks.4", "blocks.6"], help="EfficientNet-Lite0 blocks")
    parser.add_argument("--scales", nargs="+", type=int, default=[256, 192, 128], help="image sides")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with initialize_config_module("anomaly.conf", version_base="1.3"):
        cfg = compose("train", overrides=["experiment=cdflow_cpu", "data.num_workers=0",
                                          f"synthesis@data.val_synthesis={args.val_synthesis}",
                                          "paths.output_dir=/tmp/flow_pooling", "paths.root_dir=."])
    backbone = FeatureExtractor("efficientnet_lite0", args.layers, "offline")
    results: dict[str, dict[str, list[float]]] = {}
    for category in args.categories:
        data = build_datamodule(cfg).for_category(category)
        data.setup("fit")
        train, _ = pooled(backbone, data.normal_train_dataloader(), args.variants, args.scales)
        val, labels = pooled(backbone, data.val_dataloader(), args.variants, args.scales)
        for variant in args.variants:
            history = fit_and_validate(variant, backbone, train[variant], val[variant], labels, args.scales)
            results.setdefault(variant, {})[category] = history
            print(category, variant, results[variant][category], flush=True)
    for variant, per in results.items():
        print(f"{variant:8s} mean validation image AUROC: best {sum(max(v) for v in per.values()) / len(per):.3f}, "
              f"last {sum(v[-1] for v in per.values()) / len(per):.3f}")


if __name__ == "__main__":
    main()
