"""RealNet's image-score pool size and border, chosen on the VALIDATION split of a trained run (no retraining).

The image score is the maximum of the stride-1 ``pool_size``-average-pooled map inside ``score_border``
pixels of each edge; neither changes a pixel metric nor a checkpoint ranked on ``val/mean/pixel_auroc``, so
every pair can be scored on the maps of the run's own checkpoints. Prints the validation image AUROC per
category and pair, and the mean.

    OMP_NUM_THREADS=1 python bench/realnet_pooling.py outputs/realnet/<run> --sizes 1 2 4 8 16 --borders 0 2 4
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import anomaly.config.resolvers  # noqa: F401
from anomaly.deploy.sources import run_datamodule
from anomaly.engine.checkpoints import load_method, read_checkpoint
from anomaly.engine.run import selected_checkpoints
from anomaly.metrics import ImageAUROC
from anomaly.models.realnet import RealNet


def validation_maps(path: Path, model: RealNet) -> tuple[str, torch.Tensor, torch.Tensor]:
    """The category, the raw validation maps (N×1×H×W) and labels of one checkpoint's run."""
    data = run_datamodule(read_checkpoint(path), path)
    data.num_workers = 0
    data.setup("fit")
    maps, labels = [], []
    with torch.no_grad():
        for batch in data.val_dataloader():
            maps.append(model(batch["image"])[0].float())
            labels.append(batch["label"])
    return ",".join(data.categories), torch.cat(maps), torch.cat(labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="a RealNet run folder (its per-category best.ckpt / last.ckpt)")
    parser.add_argument("--sizes", nargs="+", type=int, default=[1, 2, 4, 8, 16])
    parser.add_argument("--borders", nargs="+", type=int, default=[0])
    args = parser.parse_args()
    torch.set_num_threads(1)
    pairs = [(size, border) for border in args.borders for size in args.sizes]
    table: dict[tuple[int, int], list[float]] = {pair: [] for pair in pairs}
    for path in selected_checkpoints(args.run):
        model = load_method(path).eval()
        category, maps, labels = validation_maps(path, model)
        row = []
        for size, border in pairs:
            model.model.pool_size, model.model.score_border = size, border  # the image score RealNet computes
            auroc = ImageAUROC()
            auroc.update(model.model.score(maps), labels)
            table[size, border].append(float(auroc.compute()))
            row.append(f"pool {size} border {border}: {table[size, border][-1]:.3f}")
        print(category, " | ".join(row), flush=True)
    print("mean validation image AUROC:",
          " | ".join(f"pool {s} border {b}: {sum(v) / len(v):.3f}" for (s, b), v in table.items()))


if __name__ == "__main__":
    main()
