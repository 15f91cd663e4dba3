"""Pooling variants of the dense flow on cached features, scored on the VALIDATION split only.

How the CPU presets' ``model.cells`` was chosen (notes/flow.md): EfficientNet-Lite0 blocks.4+6 at
256/192/128 px (offline weights), pooled per image as the global mean (``mean``, the paper), the global
max (``max``), both concatenated (``meanmax``) or a g×g grid of cells (``g2``, ``g4``: every cell a flow
sample, the image's −log p its worst cell). A 3-block dense flow (width 256, Adam 1e-3, batch 16) is
fitted for 60 epochs on the training images' features; the validation image AUROC is printed every 10.

    OMP_NUM_THREADS=1 python bench/flow_pooling.py perlin          # the default validation anomalies
    OMP_NUM_THREADS=1 python bench/flow_pooling.py cutpaste_scar   # small ones (the presets' choice)
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
from anomaly.nn.flows import Flow

SCALES = (256, 192, 128)
VARIANTS = ("mean", "max", "meanmax", "g2", "g4")


def pooled(backbone: FeatureExtractor, loader) -> tuple[dict[str, Tensor], Tensor]:
    """Every variant's features (B×D, or B×cells×D for grids) and the labels of a loader."""
    parts: dict[str, list[Tensor]] = {v: [] for v in VARIANTS}
    labels = []
    with torch.no_grad():
        for batch in loader:
            image, per = batch["image"], {"mean": [], "max": [], "g2": [], "g4": []}
            labels.append(batch["label"])
            for side in SCALES:
                x = image if side == image.shape[-1] else F.interpolate(image, size=(side, side), mode="bilinear",
                                                                       antialias=side < image.shape[-1])
                for f in backbone(x).values():
                    per["mean"].append(f.mean((2, 3)))
                    per["max"].append(f.amax((2, 3)))
                    per["g2"].append(F.adaptive_avg_pool2d(f, 2).flatten(2))
                    per["g4"].append(F.adaptive_avg_pool2d(f, 4).flatten(2))
            parts["mean"].append(torch.cat(per["mean"], 1))
            parts["max"].append(torch.cat(per["max"], 1))
            parts["meanmax"].append(torch.cat(per["mean"] + per["max"], 1))
            parts["g2"].append(torch.cat(per["g2"], 1).transpose(1, 2))
            parts["g4"].append(torch.cat(per["g4"], 1).transpose(1, 2))
    return {v: torch.cat(p) for v, p in parts.items()}, torch.cat(labels)


def nll(flow: Flow, x: Tensor) -> Tensor:
    """Per-image −log p: the flow's NLL, the worst cell for grids."""
    return flow.nll(x) if x.dim() == 2 else flow.nll(x.reshape(-1, x.shape[-1])).view(x.shape[0], -1).amax(1)


def fit_and_validate(train: Tensor, val: Tensor, labels: Tensor, epochs: int = 60) -> list[float]:
    torch.manual_seed(0)
    flow = Flow(train.shape[-1], "dense", 3, [256, 256], 2.0, 3, 0.0, 0)
    optimizer = torch.optim.Adam(flow.parameters(), 1e-3)
    history = []
    for epoch in range(epochs):
        flow.train()
        order = torch.randperm(train.shape[0])
        for i in range(0, len(order), 16):
            x = train[order[i:i + 16]]
            loss = flow.nll(x.reshape(-1, x.shape[-1])).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        if epoch % 10 == 9:
            flow.eval()
            auroc = ImageAUROC()
            with torch.no_grad():
                auroc.update(nll(flow, val), labels)
            history.append(round(float(auroc.compute()), 3))
    return history


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("val_synthesis", nargs="?", default="perlin", help="synthesis@data.val_synthesis option")
    parser.add_argument("--categories", nargs="+", default=["capsule", "fabric", "washer", "wood"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    with initialize_config_module("anomaly.conf", version_base="1.3"):
        cfg = compose("train", overrides=["experiment=cdflow_cpu", "data.num_workers=0",
                                          f"synthesis@data.val_synthesis={args.val_synthesis}",
                                          "paths.output_dir=/tmp/flow_pooling", "paths.root_dir=."])
    backbone = FeatureExtractor("efficientnet_lite0", ["blocks.4", "blocks.6"], "offline")
    results: dict[str, dict[str, list[float]]] = {}
    for category in args.categories:
        data = build_datamodule(cfg).for_category(category)
        data.setup("fit")
        train, _ = pooled(backbone, data.normal_train_dataloader())
        val, labels = pooled(backbone, data.val_dataloader())
        for variant in VARIANTS:
            results.setdefault(variant, {})[category] = fit_and_validate(train[variant], val[variant], labels)
            print(category, variant, results[variant][category], flush=True)
    for variant, per in results.items():
        print(f"{variant:8s} mean validation image AUROC: best {sum(max(v) for v in per.values()) / len(per):.3f}, "
              f"last {sum(v[-1] for v in per.values()) / len(per):.3f}")


if __name__ == "__main__":
    main()
