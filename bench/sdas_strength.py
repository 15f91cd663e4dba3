"""What "strength-controllable" means, measured: pretrained-feature distance of SDAS samples vs s.

    python bench/sdas_strength.py --ckpt outputs/runs/.../checkpoints/last.ckpt --data data/synthetic

For each category, ``--n`` samples are drawn at every strength in ``--s`` from the *same* initial and
per-step noise (paired), so only s changes. Each image (samples, training images, held-out normal
test images, all at the DDPM's size) is embedded with the offline ImageNet EfficientNet-Lite0
(global-average-pooled blocks.2/4/6, each L2-normalised, concatenated). Printed per s:

- ``nn_dist``: mean distance to the nearest training image of the same category;
- ``ratio``: nn_dist / the held-out normal images' nn_dist (1.0 = as close as unseen normal images);
- ``class_acc``: share of samples whose nearest training image (over all categories) is of their class.

Two references frame the ratios: the category's real anomalous test images (small defects on
normal content) and the normal test images of the *other* categories (off the class entirely).
s = 0 should sit near the held-out reference, far below the other-category one; the distance
should grow with s.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from anomaly.data.layouts import MVTecLayout
from anomaly.models.ddpm import DDPM
from anomaly.nn.backbone import FeatureExtractor
from anomaly.nn.ddpm_sampler import sample, to_uint8

LAYERS = ["blocks.2", "blocks.4", "blocks.6"]
MEAN, STD = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def load(paths: list[Path], size: int) -> np.ndarray:
    """uint8 N×H×W×3 RGB, resized like the data module (bilinear)."""
    out = []
    for p in paths:
        rgb = cv2.cvtColor(cv2.imread(str(p), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        out.append(cv2.resize(rgb, (size, size), interpolation=cv2.INTER_LINEAR))
    return np.stack(out)


@torch.no_grad()
def embed(fx: FeatureExtractor, images: np.ndarray, batch: int = 32) -> torch.Tensor:
    """Pooled, per-layer L2-normalised features (images upsampled to 224 px)."""
    feats = []
    for i in range(0, len(images), batch):
        x = torch.from_numpy(images[i:i + batch]).permute(0, 3, 1, 2).float() / 255
        x = F.interpolate(x, size=224, mode="bilinear", align_corners=False)
        maps = fx((x - MEAN) / STD)
        feats.append(torch.cat([F.normalize(maps[k].mean((2, 3)), dim=1) for k in LAYERS], dim=1))
    return torch.cat(feats)


def nn_dist(query: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    return torch.cdist(query, bank).min(dim=1).values


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--data", default="data/synthetic")
    ap.add_argument("--n", type=int, default=16, help="samples per category and strength")
    ap.add_argument("--s", default="0,0.1,0.2,0.5,1,2,4")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--method", default="ancestral", choices=["ancestral", "ddim"])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-ema", action="store_true")
    ap.add_argument("--save", default=None, help="folder for sample grids per s and a results.json")
    args = ap.parse_args()

    model = DDPM.load(args.ckpt)
    unet = model.sampling_unet(not args.no_ema)
    size = int(model.hparams.image_size if isinstance(model.hparams.image_size, int) else model.hparams.image_size[0])
    strengths = [float(v) for v in args.s.split(",")]
    fx = FeatureExtractor("efficientnet_lite0", LAYERS, weights="offline")
    layout, root = MVTecLayout(), Path(args.data)

    train_f, held_f, test_f, bad_f, train_cls = [], {}, {}, {}, []
    for ci, c in enumerate(model.categories):
        records = layout.records(root, c, "test")
        tr = embed(fx, load([r.image for r in layout.records(root, c, "train") if r.label == 0], size))
        test_f[c] = embed(fx, load([r.image for r in records if r.label == 0], size))
        bad_f[c] = embed(fx, load([r.image for r in records if r.label == 1], size))
        train_f.append(tr)
        train_cls += [ci] * len(tr)
        held_f[c] = nn_dist(test_f[c], tr).mean().item()
    all_train, all_cls = torch.cat(train_f), torch.tensor(train_cls)
    refs = {
        "anomalous test images": np.mean([nn_dist(bad_f[c], train_f[ci]).mean().item() / held_f[c]
                                          for ci, c in enumerate(model.categories)]),
        "other categories' normal images": np.mean([
            nn_dist(torch.cat([test_f[o] for o in model.categories if o != c]), train_f[ci]).mean().item() / held_f[c]
            for ci, c in enumerate(model.categories)]) if len(model.categories) > 1 else float("nan"),
    }

    rows, sample_time, n_sampled = [], 0.0, 0
    for s in strengths:
        dists, correct, grids = [], 0, []
        for ci, c in enumerate(model.categories):
            imgs = []
            for lo in range(0, args.n, args.batch):
                k = min(args.batch, args.n - lo)
                gens = [torch.Generator().manual_seed(args.seed * 100003 + ci * 10007 + lo + j) for j in range(k)]
                t0 = time.perf_counter()
                x = sample(unet, model.scheduler, torch.full((k,), ci), args.steps, s=s, method=args.method,
                           generator=gens)
                sample_time, n_sampled = sample_time + time.perf_counter() - t0, n_sampled + k
                imgs.append(to_uint8(x))
            imgs = np.concatenate(imgs)
            f = embed(fx, imgs)
            dists.append(nn_dist(f, train_f[ci]) / held_f[c])
            correct += int((all_cls[torch.cdist(f, all_train).argmin(1)] == ci).sum())
            grids.append(np.concatenate(list(imgs[:8]), axis=1))
        ratio = torch.cat(dists)
        abs_d = np.mean([held_f[c] for c in model.categories]) * ratio.mean().item()
        rows.append({"s": s, "nn_dist": abs_d, "ratio": ratio.mean().item(), "ratio_std": ratio.std().item(),
                     "class_acc": correct / (args.n * len(model.categories))})
        if args.save:
            Path(args.save).mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(Path(args.save) / f"samples_s{s:g}.png"),
                        cv2.cvtColor(np.concatenate(grids, axis=0), cv2.COLOR_RGB2BGR))

    held = np.mean(list(held_f.values()))
    print(f"DDPM {args.ckpt}: {len(model.categories)} categories, {size} px, {args.method} {args.steps} steps, "
          f"{args.n} samples/category/s")
    print(f"held-out normal test images: nn_dist {held:.4f} (ratio 1.00) "
          f"[{', '.join(f'{c} {v:.3f}' for c, v in held_f.items())}]")
    for name, ratio in refs.items():
        print(f"{name}: ratio {ratio:.2f}")
    print(f"{'s':>6} {'nn_dist':>8} {'ratio':>6} {'±std':>6} {'class_acc':>9}")
    for r in rows:
        print(f"{r['s']:>6g} {r['nn_dist']:>8.4f} {r['ratio']:>6.2f} {r['ratio_std']:>6.2f} {r['class_acc']:>9.2f}")
    print(f"sampling: {n_sampled / sample_time:.2f} images/s ({args.steps} steps, batch {args.batch}, "
          f"{torch.get_num_threads()} threads)")
    if args.save:
        (Path(args.save) / "results.json").write_text(json.dumps({"held_out": held_f, "references": refs, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
