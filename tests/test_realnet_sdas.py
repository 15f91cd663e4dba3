"""synthesis=sdas fills a missing or short bank on first use, exactly as `python -m anomaly.synthesize` would."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler

from anomaly.nn.ddpm_sampler import ancestral_step
from anomaly.synthesis.bank import Bank, BankError
from anomaly.synthesis.sdas import SDASSynthesis
from anomaly.synthesize import synthesize
from tests.test_ddpm import bank_images, ckpt, synth_cfg  # noqa: F401  (ckpt: a tiny DDPM of capsule + wood)

pytestmark = pytest.mark.one_thread


def strategy(checkpoint: Path, bank: Path, **fill) -> SDASSynthesis:
    options = {"ckpt_path": str(checkpoint), "n_per_class": 3, "batch_size": 2, "progress": False,
               "sampler": {"method": "ancestral", "num_steps": 2, "s": [0.1, 0.2], "eta": 0.0}, **fill}
    return SDASSynthesis(bank, resize=True, normal_probability=0.0, fill=options)


def test_first_use_fills_the_category_it_needs_as_synthesize_does(ckpt: Path, tmp_path: Path) -> None:  # noqa: F811
    expected = bank_images(synthesize(synth_cfg(ckpt, tmp_path / "reference")).root)
    partial = synthesize(synth_cfg(ckpt, tmp_path / "bank", "n_per_class=2"))
    assert len(partial) == 4  # a short bank (one batch per category): the first use resumes it
    sdas = strategy(ckpt, tmp_path / "bank")
    image, mask = sdas(np.full((32, 32, 3), 128, np.uint8), np.random.default_rng(0), "capsule")
    assert mask.any() and image.shape == (32, 32, 3)
    bank = Bank.open(tmp_path / "bank")
    assert bank.categories == ["capsule", "wood"] and bank.done("capsule") == {0, 1, 2} and bank.done("wood") == {0, 1}
    got = bank_images(bank.root)
    for key, value in got.items():
        assert np.array_equal(value, expected[key]), key
    sdas.prepare(["wood"])  # what RealNet calls before training, for every category it trains on
    assert Bank.open(tmp_path / "bank").done("wood") == {0, 1, 2}


def test_a_missing_ddpm_checkpoint_names_the_option(tmp_path: Path) -> None:
    with pytest.raises(BankError, match=r"^synthesis\.fill\.ckpt_path=\S+none\.ckpt is not a file; give the DDPM "
                                        r"checkpoint of python -m anomaly\.train experiment=ddpm_cpu"):
        strategy(tmp_path / "none.ckpt", tmp_path / "bank")


@pytest.mark.parametrize("variance", ["fixed_small", "learned_range"])
def test_the_sdas_step_adds_sqrt_one_plus_s_times_sigma_times_the_same_z(variance: str) -> None:
    """x_{t-1} = μ_θ(x_t, t) + √(1+s)·σ_t·z (RealNet Eq. 2), μ and σ computed here from the linear β schedule."""
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", variance_type=variance)
    scheduler.set_timesteps(20)
    t = int(scheduler.timesteps[5])  # 20 respaced steps: the previous step is t - 50
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 8, 8, generator=generator)
    out = torch.randn(2, 6 if variance == "learned_range" else 3, 8, 8, generator=generator)
    out[:, 3:] = out[:, 3:].clamp(-1, 1)
    alphas_cumprod = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000), 0)
    a_t, a_prev = alphas_cumprod[t], alphas_cumprod[t - 50]
    beta = 1 - a_t / a_prev
    x0 = ((x - (1 - a_t).sqrt() * out[:, :3]) / a_t.sqrt()).clamp(-1, 1)
    mean = a_prev.sqrt() * beta / (1 - a_t) * x0 + (1 - beta).sqrt() * (1 - a_prev) / (1 - a_t) * x
    small = (1 - a_prev) / (1 - a_t) * beta
    if variance == "learned_range":
        frac = (out[:, 3:] + 1) / 2
        sigma = torch.exp(0.5 * (frac * beta.log() + (1 - frac) * small.log()))
    else:
        sigma = small.sqrt()
    z = torch.randn(x.shape, generator=torch.Generator().manual_seed(7))
    for s in (0.0, 0.15, 1.0):
        got = ancestral_step(scheduler, out, t, x, s, torch.Generator().manual_seed(7))
        assert torch.allclose(got, mean + (1 + s) ** 0.5 * sigma * z, atol=1e-5), s
