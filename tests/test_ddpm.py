"""Class-conditional DDPM: UNet builder, strength-controllable sampler, Lightning module, SDAS bank command."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler
from diffusers.utils.torch_utils import randn_tensor
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from torch.utils.data import DataLoader

from anomaly.conf import CONF_DIR
from anomaly.config.check import ConfigError
from anomaly.config.precheck import precheck
from anomaly.models.ddpm import DDPM
from anomaly.nn.ddpm import DDPMConfigError, build_scheduler, build_unet, diffusion_loss
from anomaly.nn.ddpm_sampler import check_strength, sample
from anomaly.synthesis.bank import MANIFEST, Bank, BankError
from anomaly.synthesize import synthesize

REPO = Path(__file__).resolve().parents[1]
SIZE = 16
CATS = ["capsule", "wood"]


pytestmark = pytest.mark.one_thread


def tiny_unet(learned: bool = True, classes: int = 2) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_unet(classes, SIZE, "tiny", learned_variance=learned).eval()


def reference_ancestral(unet, scheduler, labels, steps, seed) -> torch.Tensor:
    """Plain diffusers sampler: DDPMScheduler.step with the same generator."""
    ref = DDPMScheduler.from_config(scheduler.config)
    ref.set_timesteps(steps)
    g = torch.Generator().manual_seed(seed)
    x = randn_tensor((labels.shape[0], 3, SIZE, SIZE), generator=g)
    with torch.no_grad():
        for t in ref.timesteps:
            x = ref.step(unet(x, t, class_labels=labels).sample, t, x, generator=g).prev_sample
    return x.clamp(-1, 1)


@pytest.mark.parametrize("learned", [True, False])
def test_perturbed_sampler_with_s0_equals_plain_sampler(learned: bool) -> None:
    unet, sched = tiny_unet(learned), build_scheduler(learned_variance=learned)
    labels = torch.tensor([0, 1, 1])
    ours = sample(unet, sched, labels, num_steps=3, s=0.0, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(ours, reference_ancestral(unet, sched, labels, 3, 5), atol=1e-5, rtol=0)
    perturbed = sample(unet, sched, labels, num_steps=3, s=1.0, generator=torch.Generator().manual_seed(5))
    assert (perturbed - ours).abs().mean() > 1e-3


def test_ddim_variant_with_s0_equals_plain_ddim() -> None:
    unet, sched = tiny_unet(), build_scheduler()
    labels = torch.tensor([1, 0])
    ours = sample(unet, sched, labels, num_steps=3, s=0.0, method="ddim", generator=torch.Generator().manual_seed(2))
    ref = DDIMScheduler.from_config(sched.config)
    ref.set_timesteps(3)
    g = torch.Generator().manual_seed(2)
    x = randn_tensor((2, 3, SIZE, SIZE), generator=g)
    with torch.no_grad():
        for t in ref.timesteps:
            eps = unet(x, t, class_labels=labels).sample[:, :3]
            x = ref.step(eps, t, x, eta=0.0, use_clipped_model_output=True, generator=g).prev_sample
    torch.testing.assert_close(ours, x.clamp(-1, 1), atol=1e-5, rtol=0)
    assert (sample(unet, sched, labels, 3, s=0.5, method="ddim", generator=torch.Generator().manual_seed(2))
            - ours).abs().mean() > 1e-3


def test_strength_moves_samples_further_and_per_image_seeds_ignore_batching() -> None:
    unet, sched = tiny_unet(), build_scheduler()
    labels = torch.tensor([0, 0, 1, 1])

    def draw(s: float, lab: torch.Tensor = labels, seeds: tuple = (1, 2, 3, 4)) -> torch.Tensor:
        return sample(unet, sched, lab, 4, s=s, generator=[torch.Generator().manual_seed(k) for k in seeds])

    base = draw(0.0)
    gaps = [float((draw(s) - base).abs().mean()) for s in (0.25, 1.0, 4.0)]
    assert gaps[0] < gaps[1] < gaps[2]
    torch.testing.assert_close(draw(0.3, labels[2:3], (3,)), draw(0.3)[2:3], atol=1e-5, rtol=0)


def test_bad_sampler_and_unet_options_raise_clear_errors() -> None:
    for bad in ([-0.1, 0.2], [0.3, 0.1], [0.1, 50.0], [0.1]):
        with pytest.raises(DDPMConfigError, match=r"sampler\.s"):
            check_strength(bad, "sampler.s")
    with pytest.raises(DDPMConfigError, match=r"model\.image_size=\[60, 60\].*multiples of 8"):
        build_unet(2, 60, "cpu")
    with pytest.raises(DDPMConfigError, match=r"model\.unet\.preset"):
        build_unet(2, 64, "huge")
    with pytest.raises(DDPMConfigError, match=r"sampler\.method"):
        sample(tiny_unet(), build_scheduler(), torch.tensor([0]), 2, method="euler")


def test_vlb_term_trains_only_the_variance() -> None:
    unet, sched = tiny_unet(), build_scheduler()
    unet.train()
    x0 = torch.rand(4, 3, SIZE, SIZE) * 2 - 1
    losses = diffusion_loss(unet, sched, x0, torch.tensor([0, 1, 0, 1]), generator=torch.Generator().manual_seed(0))
    assert set(losses) == {"loss", "mse", "vlb"} and torch.isfinite(losses["loss"])
    losses["vlb"].backward()
    grad = unet.conv_out.weight.grad
    assert grad[:3].abs().sum() == 0 and grad[3:].abs().sum() > 0


def batch(categories: list[str], labels: list[int] | None = None) -> dict:
    n = len(categories)
    labels = labels or [0] * n
    mask = torch.zeros(n, 1, SIZE, SIZE)
    for i, lab in enumerate(labels):
        mask[i, :, :4, :4] = float(lab)
    return {"image": torch.randn(n, 3, SIZE, SIZE), "mask": mask, "label": torch.tensor(labels),
            "category": categories, "defect": ["good"] * n, "path": [""] * n}


def tiny_module(**kw) -> DDPM:
    return DDPM(categories=CATS, image_size=SIZE, unet={"preset": "tiny"}, ema_decay=0.9, **kw)


# The step is called without a Trainer on purpose; Lightning warns that self.log() then goes nowhere.
@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)` but the `self.trainer`:UserWarning")
def test_training_step_uses_normal_images_and_category_labels() -> None:
    model = tiny_module()
    loss = model.training_step(batch(["wood", "capsule", "wood"], [0, 1, 0]), 0)
    assert loss.requires_grad and torch.isfinite(loss)
    assert model.training_step(batch(["wood"], [1]), 0) is None
    assert model.labels_of(["wood", "capsule"]).tolist() == [1, 0]
    with pytest.raises(DDPMConfigError, match=r"\['screw'\].*model\.categories"):
        model.training_step(batch(["screw"]), 0)
    big = batch(["wood"])
    big["image"] = torch.randn(1, 3, 32, 32)
    with pytest.raises(DDPMConfigError, match=r"model\.image_size=\[16, 16\].*\[32, 32\]"):
        model.training_step(big, 0)


class TinyData(L.LightningDataModule):
    """Stand-in data module: categories + image_size, a few normal images."""

    categories = CATS
    image_size = SIZE

    def train_dataloader(self) -> DataLoader:
        items = [{k: (v[0] if isinstance(v, torch.Tensor) else v[0]) for k, v in batch([c]).items()}
                 for c in CATS * 4]
        return DataLoader(items, batch_size=4)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ddpm")
    model = DDPM(unet={"preset": "tiny"}, ema_decay=0.9)   # categories / size from the data module
    trainer = L.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu", default_root_dir=out)
    trainer.fit(model, datamodule=TinyData())
    trainer.save_checkpoint(out / "last.ckpt")
    return out / "last.ckpt"


def test_cosine_lr_schedule_decays_to_zero_by_max_steps(tmp_path: Path) -> None:
    with pytest.raises(DDPMConfigError, match=r"model.lr_schedule='linear' is unknown"):
        DDPM(unet={"preset": "tiny"}, lr_schedule="linear")
    model = DDPM(unet={"preset": "tiny"}, lr=1e-3, lr_schedule="cosine", ema_decay=None)
    trainer = L.Trainer(max_steps=4, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu", default_root_dir=tmp_path)
    trainer.fit(model, datamodule=TinyData())
    schedule = trainer.lr_scheduler_configs[0].scheduler
    assert schedule.last_epoch == 4 and schedule.get_last_lr()[0] == 0.0


def test_checkpoint_keeps_categories_and_size_and_reloads(ckpt: Path) -> None:
    model = DDPM.load(ckpt)
    assert model.categories == CATS and model.hparams.image_size == SIZE and model.ema is not None and model.ema.updates > 0
    payload = torch.load(ckpt, weights_only=True)  # plain data only: loads safely
    payload["state_dict"]["unet.class_embedding.weight"] = torch.zeros(5, 32)
    torch.save(payload, ckpt.with_name("bad.ckpt"))
    with pytest.raises(DDPMConfigError, match=r"ckpt_path=.*5 classes but lists 2 categories"):
        DDPM.load(ckpt.with_name("bad.ckpt"))
    other = DDPM(categories=["a", "b", "c"], image_size=SIZE, unet={"preset": "tiny"})
    with pytest.raises(DDPMConfigError, match=r"ckpt_path was trained on 2 categories.*this run has 3"):
        other.on_load_checkpoint(payload)
    with pytest.raises(DDPMConfigError, match=r"ckpt_path=.*does not exist"):
        DDPM.load(ckpt.with_name("none.ckpt"))


def synth_cfg(ckpt: Path, bank: Path, *overrides: str):
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("synthesize", overrides=[f"ckpt_path={ckpt}", f"bank_dir={bank}", "n_per_class=3",
                                                "batch_size=2", "sampler.num_steps=2", "progress=false",
                                                "synthesis.bank=unused", *overrides])


def bank_images(root: Path) -> dict[tuple[str, int], np.ndarray]:
    import cv2

    return {(e.category, e.index): cv2.imread(str(root / e.file)) for e in Bank.open(root).entries()}


def test_synthesize_fills_bank_and_resumes_identically(ckpt: Path, tmp_path: Path, monkeypatch) -> None:
    batches: list[list[float]] = []  # the strengths of each batch drawn, which name its images

    def recording_sample(*args, **kwargs):
        batches.append(kwargs["s"])
        return sample(*args, **kwargs)

    monkeypatch.setattr("anomaly.synthesis.fill.sample", recording_sample)
    full = synthesize(synth_cfg(ckpt, tmp_path / "full"))
    full_batches, batches[:] = list(batches), []
    assert len(full) == 6 and full.image_size == (SIZE, SIZE)
    s = [e.s for e in full.entries()]
    assert all(0.1 <= v <= 0.2 for v in s) and len(set(s)) == 6

    calls = {"n": 0}
    original = Bank.write

    def dying_write(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # killed between the two images of the first batch
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Bank, "write", dying_write)
    with pytest.raises(KeyboardInterrupt):
        synthesize(synth_cfg(ckpt, tmp_path / "resumed"))
    monkeypatch.setattr(Bank, "write", original)
    assert len(Bank.open(tmp_path / "resumed")) == 1
    assert batches == full_batches[:1]
    synthesize(synth_cfg(ckpt, tmp_path / "resumed"))  # draws the half-written batch again, writes its missing image
    assert batches[1:] == full_batches  # the same batches as one run: batched convolutions round by batch
    a, b = bank_images(tmp_path / "full"), bank_images(tmp_path / "resumed")
    assert len(Bank.open(tmp_path / "resumed")) == 6
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_synthesize_bad_input_names_the_option(ckpt: Path, tmp_path: Path) -> None:
    with pytest.raises(DDPMConfigError, match=r"categories=\['screw'\].*ckpt_path=.*2 classes"):
        synthesize(synth_cfg(ckpt, tmp_path / "b", "categories=[screw]"))
    with pytest.raises(DDPMConfigError, match=r"sampler\.s"):
        synthesize(synth_cfg(ckpt, tmp_path / "b", "sampler.s=[0.5,0.1]"))
    Bank.create(tmp_path / "other", ["capsule"], (SIZE, SIZE))
    with pytest.raises(BankError, match=r"bank_dir=.*categories \['capsule'\], not \['wood'\]"):
        synthesize(synth_cfg(ckpt, tmp_path / "other"))
    synthesize(synth_cfg(ckpt, tmp_path / "c", "n_per_class=1"))
    with pytest.raises(BankError, match=r"bank_dir=.*sampler"):
        synthesize(synth_cfg(ckpt, tmp_path / "c", "sampler.num_steps=3"))


KILL_AFTER = 5  # entries the killed writer finishes; it dies appending the manifest line of the next


def test_bank_killed_with_sigkill_resumes_without_duplicates(ckpt: Path, tmp_path: Path) -> None:
    """A writer SIGKILLed at a fixed point (image renamed into place, half its manifest line written)."""
    bank = tmp_path / "killed"
    script = textwrap.dedent(f"""
        import os, signal, sys; sys.path.insert(0, {str(REPO)!r})
        import torch; torch.set_num_threads(1)
        from anomaly.synthesis.bank import Bank
        from anomaly.synthesize import synthesize
        from tests.test_ddpm import synth_cfg

        finished = 0
        original_write, os_write = Bank.write, os.write

        def torn_append(fd, data):
            os_write(fd, data[: len(data) // 2])
            os.kill(os.getpid(), signal.SIGKILL)

        def write(self, *args, **kwargs):
            global finished
            if finished == {KILL_AFTER}:
                os.write = torn_append  # Bank.write appends its manifest line with os.write
            entry = original_write(self, *args, **kwargs)
            finished += 1
            return entry

        Bank.write = write
        synthesize(synth_cfg({str(ckpt)!r}, {str(bank)!r}, "n_per_class=6", "batch_size=1"))
    """)
    # No timing in the test itself: the child kills itself; the timeout only guards against a hang.
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    manifest = (bank / MANIFEST).read_text()
    assert manifest.count("\n") == KILL_AFTER and not manifest.endswith("\n")  # a torn last line
    assert len(list(bank.rglob("*.png"))) == KILL_AFTER + 1  # the dying entry's image has no manifest line
    assert len(Bank.open(bank)) == KILL_AFTER  # readers ignore both

    synthesize(synth_cfg(ckpt, bank, "n_per_class=6", "batch_size=4"))
    lines = (bank / MANIFEST).read_text().splitlines()
    keys = [(json.loads(x)["category"], json.loads(x)["index"]) for x in lines]
    assert len(keys) == len(set(keys)) == 6 * len(CATS)
    assert set(keys) == {(c, i) for c in CATS for i in range(6)}
    assert not list(bank.rglob("*.tmp"))
    files = {str(p.relative_to(bank)) for p in bank.rglob("*.png")}
    assert files == {e.file for e in Bank.open(bank).entries()}


def test_synthesize_command_line_is_checked_before_running() -> None:
    precheck("synthesize", ["synthesis=sdas", "ckpt_path=x.ckpt", "n_per_class=4", "sampler.s=[0.1,0.2]"])
    with pytest.raises(ConfigError, match=r"did you mean 'n_per_class'"):
        precheck("synthesize", ["ckpt_path=x.ckpt", "n_per_clas=4"])
    with pytest.raises(ConfigError, match=r"did you mean 'sampler\.num_steps'"):
        precheck("synthesize", ["sampler.num_step=4"])


def test_train_then_synthesize_commands_end_to_end(tmp_path: Path) -> None:
    """`python -m anomaly.train model=ddpm` as a user runs it, then the synthesize step on its checkpoint."""
    from anomaly.data.synthetic import ensure_synthetic

    data = ensure_synthetic(tmp_path / "data", seed=0, image_size=32, n_train=2, n_test_good=1,
                            n_test_defect_per_type=1)
    env = {**os.environ, "ANOMALY_ROOT": str(tmp_path), "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}

    def run(*args: str) -> subprocess.CompletedProcess:
        out = subprocess.run([sys.executable, "-m", *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
        return out

    run("anomaly.train", "model=ddpm", "model.unet.preset=tiny", f"data.root={data}", "data.prepare=null",
        "data.image_size=16", "data.num_workers=0", "logger=none", "trainer.max_steps=2",
        "trainer.enable_progress_bar=false", f"hydra.run.dir={tmp_path / 'run'}")
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert DDPM.load(ckpt).categories == sorted(p.name for p in data.iterdir() if p.is_dir())
    bank = synthesize(synth_cfg(ckpt, tmp_path / "bank", "n_per_class=2"))
    assert len(bank) == 2 * len(bank.categories) and bank.image_size == (16, 16)
