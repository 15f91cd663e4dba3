"""RealNet CPU-preset costs: AFS time, training steps/s, test images/s, peak RSS; the paper preset's size.

    OMP_NUM_THREADS=1 python bench/realnet.py                    # experiment=realnet_cpu sizes, capsule
    OMP_NUM_THREADS=1 python bench/realnet.py --steps 20 --category wood
    OMP_NUM_THREADS=1 python bench/realnet.py data.image_size=256   # any override of the preset
    OMP_NUM_THREADS=1 python bench/realnet.py model.feature_cache=0  # the backbone on the sources every step
    python bench/realnet.py --steps 12 --split                     # 2 threads; ms per part of a step

Composes the real presets (``experiment=realnet_cpu`` / ``realnet_mvtec``), runs AFS over the preset's
``afs_batches`` Perlin batches, ``--steps`` optimizer steps and one pass over the test images. The paper
preset is built on the meta device (no weights, no memory): its parameter count per block.
"""

from __future__ import annotations

import argparse
import itertools
import resource
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

import anomaly.config.resolvers  # noqa: F401
from anomaly.conf import CONF_DIR
from anomaly.engine.build import build_datamodule
from anomaly.models.realnet import RealNet


def preset(name: str, *overrides: str):
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment={name}", *overrides])
    OmegaConf.update(cfg, "paths.root_dir", str(CONF_DIR.parents[1]), force_add=True)
    return cfg


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def paper_parameters() -> None:
    cfg = preset("realnet_mvtec", "model.backbone.weights=none")
    with torch.device("meta"):
        model = instantiate(cfg.model)
    parts = {"backbone (frozen)": model.model.backbone, "reconstruction UNets": model.model.unets,
             "RRS head": model.model.rrs}
    for name, part in parts.items():
        print(f"paper preset {name}: {count(part) / 1e6:.1f} M parameters")


def step_parts(model: RealNet, optimizer: torch.optim.Optimizer, batches: Iterator[dict], steps: int) -> None:
    """Milliseconds per step of each part of ``RealNet.losses`` + backward + optimizer step."""
    parts: dict[str, float] = {}

    @contextmanager
    def timed(name: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        parts[name] = parts.get(name, 0.0) + time.perf_counter() - start

    for _ in range(steps):
        batch = next(batches)
        with timed("backbone"):
            anomalous, normal = model.training_features(batch["image"], batch["source"])
        with timed("reconstruction"):
            rec = model.model.reconstruct(anomalous)
        with timed("head"):
            logits = model.model.logits(rec.residuals, tuple(batch["image"].shape[-2:]))
        with timed("losses"):
            loss = F.cross_entropy(logits, batch["mask"][:, 0].long()) + sum(
                F.mse_loss(r, f) for r, f in zip(rec.reconstructions, normal, strict=True))
        optimizer.zero_grad()
        with timed("backward"):
            loss.backward()
        with timed("optimizer"):
            optimizer.step()
    print("step parts: " + ", ".join(f"{name} {1000 * t / steps:.0f} ms" for name, t in parts.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--category", default="capsule")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--split", action="store_true", help="also time each part of a training step")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of experiment=realnet_cpu")
    args = parser.parse_args()
    torch.manual_seed(0)
    cfg = preset("realnet_cpu", f"data.category={args.category}", "data.num_workers=0", *args.overrides)
    cfg.data.root = str(CONF_DIR.parents[1] / "data" / "synthetic")
    data = build_datamodule(cfg)
    data.setup("fit")
    model = instantiate(cfg.model)
    model.trainer = SimpleNamespace(datamodule=data, world_size=1, strategy=None,  # what on_fit_start reads
                                    estimated_stepping_batches=args.steps)

    start = time.perf_counter()
    RealNet.on_fit_start(model)
    print(f"AFS ({cfg.model.afs_batches} batches of {cfg.data.batch_size}): {time.perf_counter() - start:.1f} s")

    optimizer = model.configure_optimizers()
    optimizer = optimizer["optimizer"] if isinstance(optimizer, dict) else optimizer  # a schedule: steps/s only
    batches = itertools.cycle(list(itertools.islice(iter(data.train_dataloader()), 4)))
    model.train()
    for _ in range(4):  # warm-up: one pass over the batches (an epoch: fills model.feature_cache)
        model.losses(next(batches))
    start = time.perf_counter()
    for _ in range(args.steps):
        losses = model.losses(next(batches))
        optimizer.zero_grad()
        (losses["seg"] + losses["mse"]).backward()
        optimizer.step()
    print(f"training: {args.steps / (time.perf_counter() - start):.2f} steps/s (batch {cfg.data.batch_size}, "
          f"{cfg.data.image_size} px, feature cache {cfg.model.feature_cache})")
    if args.split:
        step_parts(model, optimizer, batches, args.steps)

    model.eval()
    images, start = 0, time.perf_counter()
    with torch.inference_mode():
        for batch in data.test_dataloader():
            model(batch["image"])
            images += batch["image"].shape[0]
    print(f"test: {images / (time.perf_counter() - start):.1f} images/s ({images} images)")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    paper_parameters()


if __name__ == "__main__":
    main()
