"""RealNet's image-score pool size and border, chosen on the VALIDATION split of a trained run (no retraining).

The image score is the maximum of the stride-1 ``pool_size``-average-pooled map inside ``score_border``
pixels of each edge; neither changes a pixel metric nor a checkpoint ranked on ``val/mean/pixel_auroc``, so
every pair can be scored on the maps of the run's own checkpoints. Prints the validation image AUROC per
category and pair and the mean, then the test image AUROC of the pair with the best validation mean only
(what the run would have tested with that pair; test never takes part in the choice).

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

Pair = tuple[int, int]  # (pool_size, score_border)


def split_maps(path: Path, model: RealNet) -> tuple[str, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """The category and, for the validation and test splits, the raw maps (N×1×H×W) and labels of one
    checkpoint's run."""
    data = run_datamodule(read_checkpoint(path), path)
    data.num_workers = 0
    data.setup("fit")
    data.setup("test")
    found = {}
    with torch.no_grad():
        for split, loader in (("val", data.val_dataloader()), ("test", data.test_dataloader())):
            maps, labels = [], []
            for batch in loader:
                maps.append(model(batch["image"])[0].float())
                labels.append(batch["label"])
            found[split] = torch.cat(maps), torch.cat(labels)
    return ",".join(data.categories), found


def image_auroc(model: RealNet, pair: Pair, maps: torch.Tensor, labels: torch.Tensor) -> float:
    """The image AUROC of the score RealNet computes with this pool size and border."""
    model.model.pool_size, model.model.score_border = pair
    auroc = ImageAUROC()
    auroc.update(model.model.score(maps), labels)
    return float(auroc.compute())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="a RealNet run folder (its per-category best.ckpt / last.ckpt)")
    parser.add_argument("--sizes", nargs="+", type=int, default=[1, 2, 4, 8, 16])
    parser.add_argument("--borders", nargs="+", type=int, default=[0])
    args = parser.parse_args()
    torch.set_num_threads(1)
    pairs: list[Pair] = [(size, border) for border in args.borders for size in args.sizes]
    table: dict[Pair, list[float]] = {pair: [] for pair in pairs}
    runs = []
    for path in selected_checkpoints(args.run):
        model = load_method(path).eval()
        category, maps = split_maps(path, model)
        runs.append((category, model, maps["test"]))
        for pair in pairs:
            table[pair].append(image_auroc(model, pair, *maps["val"]))
        print(category, " | ".join(f"pool {s} border {b}: {table[s, b][-1]:.3f}" for s, b in pairs), flush=True)
    mean = {pair: sum(v) / len(v) for pair, v in table.items()}
    print("mean validation image AUROC:", " | ".join(f"pool {s} border {b}: {m:.3f}" for (s, b), m in mean.items()))
    best = max(pairs, key=lambda pair: mean[pair])  # the first listed wins a tie
    tested = [(category, image_auroc(model, best, *test)) for category, model, test in runs]
    print(f"test image AUROC at the validation choice pool {best[0]} border {best[1]}:",
          ", ".join(f"{c} {v:.3f}" for c, v in tested), f"| mean {sum(v for _, v in tested) / len(tested):.3f}")


if __name__ == "__main__":
    main()
