"""Fill an SDAS bank from a trained class-conditional DDPM: per-image seeds and strengths, resumable.

Each image has its own seed and strength s ~ U[sampler.s] derived from (seed, category, index), and
images are drawn in fixed blocks of ``batch_size`` indices (0..b-1, b..2b-1, ...), so a killed run
resumes where it stopped and, at the same ``batch_size`` and ``n_per_class``, equals an uninterrupted
run bit for bit. A block that was half written is drawn again whole and only its missing images are
written: batched convolutions round differently with the batch's size and composition, so redrawing a
missing image in another batch would change it by a few grey levels on some machines.
``anomaly.synthesize`` is the command; this module does the work.
"""

from __future__ import annotations

import logging
import time
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from anomaly.models.ddpm import DDPM
from anomaly.nn.ddpm import DDPMConfigError
from anomaly.nn.ddpm_sampler import check_strength, sample, to_uint8
from anomaly.synthesis.bank import Bank, BankError

log = logging.getLogger(__name__)


def entry_seed(seed: int, category: str, index: int) -> int:
    """Seed of one bank image, independent of batching and of the order categories are sampled in."""
    state = np.random.SeedSequence([int(seed), zlib.crc32(category.encode()), int(index)]).generate_state(1)
    return int(state[0])


def resolve_categories(requested: Sequence[str] | None, model: DDPM, ckpt_path: str) -> list[str]:
    """Requested categories (default: all of the checkpoint), checked against the checkpoint's classes."""
    if not requested:
        return model.categories
    requested = [str(c) for c in requested]
    unknown = [c for c in requested if c not in model.categories]
    if unknown:
        raise DDPMConfigError(f"categories={requested} includes {unknown}, but ckpt_path={ckpt_path} was trained "
                              f"on {len(model.categories)} classes {model.categories}; pick from those or "
                              "train a DDPM on these categories.")
    return requested


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def fill_bank(cfg: DictConfig, only: Sequence[str] | None = None) -> Bank:
    """Sample the missing bank entries described by ``cfg`` (see ``conf/synthesize.yaml``); with ``only``,
    the bank still covers every category of ``cfg`` but only those listed are sampled now."""
    if int(cfg.n_per_class) < 1:
        raise DDPMConfigError(f"n_per_class={cfg.n_per_class} must be at least 1.")
    if int(cfg.batch_size) < 1:
        raise DDPMConfigError(f"batch_size={cfg.batch_size} must be at least 1.")
    s_range = check_strength(cfg.sampler.s, "sampler.s")
    model = DDPM.load(cfg.ckpt_path, option="ckpt_path")
    categories = resolve_categories(cfg.categories, model, cfg.ckpt_path)
    size = model.hparams.image_size
    hw = [size, size] if isinstance(size, int) else list(size)
    sampler: dict[str, Any] = OmegaConf.to_container(cfg.sampler, resolve=True)  # type: ignore[assignment]
    bank = Bank.create(cfg.bank_dir, categories, hw, option="bank_dir", sampler=sampler, seed=int(cfg.seed))
    for key, value in (("sampler", sampler), ("seed", int(cfg.seed))):
        if bank.meta.get(key) != value:
            raise BankError(f"bank_dir={bank.root} was started with {key}={bank.meta.get(key)}, not {value}; "
                            f"resume with the same {key} or choose a new bank_dir.")
    device = _device(cfg.device)
    unet = model.sampling_unet(bool(cfg.use_ema)).to(device).eval()
    wanted = categories if only is None else [c for c in categories if c in set(only)]
    n, batch = int(cfg.n_per_class), int(cfg.batch_size)
    todo = {c: set(range(n)) - bank.done(c) for c in wanted}  # done() reads the manifest: once per category
    total = sum(len(v) for v in todo.values())
    log.info("Bank %s: %d images to sample (%d already done).", bank.root, total, n * len(wanted) - total)
    start, written = time.perf_counter(), 0
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, disable=not cfg.progress) as progress:
        task = progress.add_task("SDAS sampling", total=total)
        for category, missing in todo.items():
            label = model.categories.index(category)
            for block in sorted({i // batch for i in missing}):
                chunk = list(range(block * batch, min(block * batch + batch, n)))
                seeds = [entry_seed(cfg.seed, category, i) for i in chunk]
                strengths = [float(np.random.default_rng(sd).uniform(*s_range)) for sd in seeds]
                images = sample(unet, model.scheduler, torch.full((len(chunk),), label, device=device),
                                num_steps=int(sampler["num_steps"]), s=strengths, method=sampler["method"],
                                eta=float(sampler.get("eta", 0.0)),
                                generator=[torch.Generator().manual_seed(sd) for sd in seeds])
                for i, img, st, sd in zip(chunk, to_uint8(images), strengths, seeds, strict=True):
                    if i in missing:  # the rest of a half-written block is already in the bank
                        bank.write(category, i, img, st, sd)
                        written += 1
                        progress.update(task, advance=1, description=f"SDAS sampling {category}")
    elapsed = time.perf_counter() - start
    if written:
        log.info("Wrote %d images in %.1f s (%.2f images/s) to %s.", written, elapsed, written / elapsed, bank.root)
    return bank
