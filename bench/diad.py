"""DiAD figures: paper-preset sizes (meta device), CPU-preset training and inference speed, peak RSS.

Usage: ``python bench/diad.py [--experiment diad_cpu|diad_pixel_cpu] [--threads N] [--steps N]
[--images N]``. Inference cost is split into the latent (autoencoder encode + decode; for the
feature latent: backbone + viewing decoder), the denoiser steps and the scoring. Training steps
of the feature latent are timed with its feature cache warm (every epoch after the first).
"""

from __future__ import annotations

import argparse
import os
import resource
import time

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

import anomaly.config.resolvers  # noqa: F401 - ${anomaly.*} resolvers used by the model config
from anomaly.conf import CONF_DIR
from anomaly.nn.diffusion import SemanticGuidedBranch, build_autoencoder, build_unet, ddim_reconstruct
from anomaly.nn.diffusion.latents import FeatureLatent

CONF = str(CONF_DIR)


def millions(module: torch.nn.Module) -> float:
    return sum(p.numel() for p in module.parameters()) / 1e6


def paper_sizes() -> None:
    with torch.device("meta"):
        unet = build_unet("sd15")
        branch = SemanticGuidedBranch(unet, control="mid", sff=True, downsampling=8, copy_weights=False)
        vae = build_autoencoder("kl-f8")
    figures = {"UNet": (millions(unet), 859.5),
               "SG branch": (millions(branch.controlnet) + millions(branch.source_convs), 361.3),
               "SFF": (millions(branch.sff), 110.6), "VAE": (millions(vae), 83.7)}
    print("paper preset (meta device)      ours      paper")
    for name, (ours, paper) in figures.items():
        print(f"  {name:<28}{ours:8.2f} M {paper:8.1f} M  ({100 * (ours - paper) / paper:+.2f} %)")


def cpu_model(experiment: str) -> torch.nn.Module:
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment={experiment}"])
    model = instantiate(cfg.model)
    return model, cfg


def timed(fn, repeat: int) -> float:
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--experiment", default="diad_cpu", choices=["diad_cpu", "diad_pixel_cpu"])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--steps", type=int, default=10, help="timed training steps")
    parser.add_argument("--images", type=int, default=32, help="timed test images")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}")
    paper_sizes()

    model, cfg = cpu_model(args.experiment)
    size, batch = cfg.data.image_size, cfg.data.batch_size
    features = isinstance(model.latent, FeatureLatent)
    latent = f"viewing decoder {millions(model.latent.decoder):.2f} M" if features else (
        f"autoencoder {millions(model.latent.autoencoder):.2f} M")
    print(f"{args.experiment}: UNet {millions(model.denoiser.unet):.2f} M, SG branch "
          f"{millions(model.denoiser.branch.controlnet):.2f} M, SFF {millions(model.denoiser.branch.sff):.2f} M, "
          f"{latent}, {size}² images")
    images = torch.randn(batch, 3, size, size)
    model.train()
    model.latent.prepare(images, lambda value: value)  # diffusion phase: the latent is frozen, its scale set
    params = [p for m in model.denoiser.trainable_modules().values() for p in m.parameters()]
    params += [p for group, _ in model.latent.optimizer_groups() for p in group["params"]]
    optimizer = torch.optim.AdamW(params, lr=1e-4)

    def train_step() -> None:
        optimizer.zero_grad()
        with torch.no_grad():
            z0 = model.encode(images, sample=True, cached=True)
        noise = torch.randn_like(z0)
        t = torch.randint(0, model.t_train_max or 1000, (batch,))
        x_t = model.scheduler.add_noise(z0, noise, t)
        target = z0 if model.scheduler.config.prediction_type == "sample" else noise
        loss = (model.denoiser(x_t, t, images) - target).pow(2).mean()
        loss = loss + sum(model.latent.auxiliary_losses(z0, images).values())
        loss.backward()
        optimizer.step()

    train_step()
    step_s = timed(train_step, args.steps)
    print(f"training: {1 / step_s:.2f} steps/s at batch {batch} ({step_s:.3f} s/step)")

    model.eval()
    eval_batch = cfg.data.eval_batch_size
    test = torch.randn(eval_batch, 3, size, size)
    repeat = max(1, args.images // eval_batch)
    with torch.no_grad():
        z0 = model.encode(test)
        ae_s = timed(lambda: model.decode(model.encode(test)), repeat)
        den_s = timed(lambda: ddim_reconstruct(lambda x, t: model.denoiser(x, t, test), model.sampler, z0,
                                               model.t_start, model.n_steps), repeat)
        recon = model.decode(z0)
        score_s = timed(lambda: model.scorer.finish(model.latent.distances(model.scorer, test, z0, z0, recon)), repeat)
        batch_of = {"image": test, "category": ["bench"] * eval_batch, "path": ["bench.png"] * eval_batch}
        if model.calibration is not None:  # statistics from the same images (its pass costs one forward per image)
            other = torch.randn_like(test)
            model.fit_calibration([{**batch_of, "image": x} for x in (test, other)])
        total_s = timed(lambda: model.evaluate_batch(batch_of), repeat)
    per = 1000 / eval_batch
    steps = int((model.sampler.timesteps <= model.t_start).sum())
    print(f"test: {eval_batch / total_s:.1f} images/s at batch {eval_batch}; per image: latent "
          f"{ae_s * per:.1f} ms, denoiser ({steps} DDIM steps from t={model.t_start}) {den_s * per:.1f} ms, scoring "
          f"{score_s * per:.1f} ms, total {total_s * per:.1f} ms")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
