"""Every ``python -m anomaly.<module>`` command of the README, run the way a user runs it.

Each command is taken from the README's ``bash`` blocks and inline code and run **as printed**: in a
subprocess, from a fresh working directory, with only its ``<placeholders>`` (and the example paths
``/data/mvtec``, ``parts/`` ...) filled in and overrides that make it tiny and offline appended at the end
(one small category at 64 px, step caps, random weights where the preset wants hub weights). Never a
``hydra.*`` override and never ``ANOMALY_ROOT``: what a user types must work as typed.

- The everyday commands (the default train, a basic sweep, evaluate, predict, export, report) run in
  ``make test``; everything else that can run here (the CPU presets with step caps, Optuna, joblib, DDP,
  the paper presets with random weights) runs in ``make test-e2e`` (marker ``e2e``).
- A command that cannot run on this machine is in ``NOT_HERE`` with its reason; it still composes exactly
  as printed (precheck, composition, the target check: what ``--cfg job`` checks).

Commands that use each other's results (``<run>``, ``<sweep>``, ``outputs/ddpm_cpu`` ...) share one working
directory, which was empty when the first of them started: the user's folder, in README order.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

README = Path(__file__).resolve().parents[1] / "README.md"

# Appended to every command of a module: what makes a run tiny (and offline) here.
TINY_DATA = ["data.category=capsule", "data.image_size=64", "data.crop_size=null", "data.num_workers=0",
             "data.batch_size=8", "data.eval_batch_size=8", "callbacks.heatmaps.n_images=1"]
STEPS = ["trainer.max_epochs=1", "trainer.max_steps=2", "++trainer.limit_train_batches=2", "trainer.max_time=null",
         "trainer.check_val_every_n_epoch=1", "++trainer.val_check_interval=1.0", "++trainer.limit_val_batches=2",
         "trainer.log_every_n_steps=1"]
TINY = {"anomaly.train": TINY_DATA + STEPS, "anomaly.evaluate": ["data.num_workers=0"]}

# Extra overrides of single commands (keyed by a piece of the command): offline weights, small banks, sweep sizes;
# {synthetic} is the generated data set (in the MVTec AD layout).
EXTRA = {
    "experiment=padim_wr50": ["model.backbone.weights=none", "data.root={synthetic}"],
    "hparams_search=cdflow_optuna": ["data.image_size=64", "'model.scales=[64,48]'", "model.n_views=1"],
    "experiment=cdflow": ["'model.scales=[64,48]'"],
    "experiment=differnet_cpu": ["'model.scales=[64,48]'", "model.n_views=1"],
    "experiment=realnet_sdas_cpu": ["synthesis.fill.n_per_class=2"],
    "experiment=realnet": ["data.image_size=128"],  # its UNet halves the stride-32 map twice: sides of 128
    "experiment=diad_pixel_cpu": ["model.latent.fit_steps=1"],  # the autoencoder's phase ends before validation
    "anomaly.synthesize": ["n_per_class=2", "sampler.num_steps=2"],
    "experiment=ddpm_cpu": ["data.category=all"],
    "trainer=ddp": ["data.category=capsule"],
}

# Commands that cannot run on this machine, with the reason: they compose as printed instead.
NOT_HERE = {
    "python -m anomaly.train -m hydra/launcher=slurm hydra.launcher.partition=gpu trainer=ddp trainer.devices=4 "
    "+trainer.num_nodes=2": "needs a SLURM cluster (sbatch) and GPUs",
    "python -m anomaly.train experiment=diad_mvtec data.root=/data/mvtec":
        "needs Stable Diffusion 1.5's weights (a hub download) and a GPU for its 1.3 B parameters",
    "python -m anomaly.train model=diad_autoencoder data=mvtec data.root=/data/mvtec":
        "trains DiAD's 83.7 M-parameter KL autoencoder at 256 px for 50 epochs of 12: a GPU job",
    "python -m anomaly.evaluate ckpt_path=outputs/flow/f384_capsule_washer data.eval_batch_size=4":
        "names one measured run folder of the results (the same evaluate with <run> runs above)",
}

# Where each command runs: commands that read another's results share its working directory (a chain).
CHAINS = {
    "sdas": ("experiment=ddpm_cpu", "experiment=realnet_sdas_cpu", "anomaly.synthesize", "synthesis=sdas images="),
    "flow": ("outputs/flow/contrastive_cpu",),
    "sweep": ("anomaly.report <sweep>", "-m data.category="),
}
FAST = ("python -m anomaly.train", "python -m anomaly.train ckpt_path=last", "python -m anomaly.train -m data.category=capsule,wood model.n_features=50,100",
        "python -m anomaly.report <sweep>", "python -m anomaly.evaluate ckpt_path=<run> evaluator=binned",
        "python -m anomaly.predict ckpt_path=<run> input=path/to/images/",
        "python -m anomaly.export ckpt_path=<run> format=onnx")


def readme_commands() -> list[str]:
    """The README's ``python -m anomaly.*`` commands, comments stripped, in order, once each."""
    text = README.read_text()
    found: list[str] = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        found += [line.split("  #")[0].split(" # ")[0].strip() for line in block.splitlines()
                  if line.strip().startswith("python -m anomaly.")]
    for span in re.findall(r"`((?:OMP_NUM_THREADS=\d+\s+)?python -m anomaly\.[^`]+)`", text):
        span = re.sub(r"^OMP_NUM_THREADS=\d+ ", "", " ".join(span.split()))
        if " [" not in span and "|" not in span:  # not a usage line ("<folder> [output=DIR]", "<a | b>")
            found.append(span)
    return list(dict.fromkeys(found))


COMMANDS = readme_commands()


def chain_of(command: str) -> str:
    """The working directory a command runs in: its chain's, else the main one (``<run>``), else its own."""
    for name, keys in CHAINS.items():
        if any(key in command for key in keys):
            return name
    return "main" if "<run" in command or "outputs/runs" in command or command in FAST else command


def marks(command: str) -> list[pytest.MarkDecorator]:
    group = pytest.mark.xdist_group(chain_of(command))
    return [group] if command in FAST or command in NOT_HERE else [group, pytest.mark.e2e]


def test_the_readme_shows_commands() -> None:
    assert len(COMMANDS) > 20 and set(FAST) <= set(COMMANDS), "the everyday commands left the README"
    assert set(NOT_HERE) <= set(COMMANDS), "a command listed as not runnable here left the README"


# -- the user's folder and the example paths ------------------------------------------------------------------

class Workspace:
    """A user's working directory: created empty, then holding what the commands run in it wrote."""

    def __init__(self, path: Path, synthetic: Path, trees: Path) -> None:
        self.path, self.synthetic, self.trees = path, synthetic, trees
        self.path.mkdir(parents=True)
        self.runs: dict[str, Path] = {}
        self.done: set[str] = set()  # the README commands run here

    def new_folders(self, before: set[Path], pattern: str) -> list[Path]:
        return sorted(set(self.path.glob(pattern)) - before)

    def fill(self, command: str, tmp: Path) -> str:
        """The command with its placeholders and example paths replaced by real ones of this workspace."""
        run = self.runs.get("run") or self.runs.get("ddpm")  # <run> of a synthesize command: the DDPM's
        table = [
            (r"outputs/runs/<date>/<time>_padim_synthetic", lambda: str(run)),
            (r"<run folder[^>]*>", lambda: str(run)),
            (r"<run>", lambda: str(run)),
            (r"<sweep>", lambda: str(self.runs.get("sweep", tmp / "sweep"))),
            (r"<ddpm run>", lambda: str(self.runs["ddpm"])),
            (r"<image \| folder[^>]*>", lambda: str(self.images())),
            (r"<folder>", lambda: str(tmp / "bank")),
            (r"(?<=data\.root=)/data/mvtec", lambda: str(self.trees / "mvtec")),
            (r"(?<=data\.root=)/data/visa", lambda: str(self.trees / "visa")),
            (r"(?<=data\.root=)/elsewhere", lambda: str(self.synthetic)),
            (r"(?<=input=)(path/to/images/|parts/)", lambda: str(self.images())),
            (r"~/my_conf", lambda: str(my_conf(tmp))),
        ]
        for pattern, value in table:
            if re.search(pattern, command):
                command = re.sub(pattern, lambda _m, v=value: v(), command)
        assert "<" not in command, f"a placeholder of `{command}` has no value in this test: add it to Workspace.fill"
        return command

    def images(self) -> Path:
        """A user's folder of images: a few good and defective capsules of the test split."""
        folder = self.path / "parts"
        if not folder.is_dir():
            folder.mkdir()
            for kind in ("good", "crack"):
                found = sorted((self.synthetic / "capsule" / "test" / kind).glob("*.png"))[:3]
                assert found, f"no capsule test/{kind} images in {self.synthetic}"
                for image in found:
                    shutil.copy(image, folder / f"{kind}_{image.name}")
        return folder


def my_conf(tmp: Path) -> Path:
    """``~/my_conf``: a user's own config folder adding the option ``data=my_set``."""
    folder = tmp / "my_conf"
    (folder / "data").mkdir(parents=True, exist_ok=True)
    (folder / "data" / "my_set.yaml").write_text("defaults:\n  - synthetic\n")
    return folder


def visa_tree(root: Path, synthetic: Path) -> Path:
    """A small tree in VisA's layout (images of the synthetic set), categories ``candle`` and ``pcb1``."""
    rows = ["object,split,label,image,mask"]
    for cat in ("candle", "pcb1"):
        base = root / cat / "Data"
        for i, image in enumerate(sorted((synthetic / "capsule" / "train" / "good").glob("*.png"))[:12]):
            target = base / "Images" / "Normal" / f"{i:04d}.JPG"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(image, target)
            rows.append(f"{cat},{'train' if i < 8 else 'test'},normal,{cat}/Data/Images/Normal/{i:04d}.JPG,")
        masks = synthetic / "capsule" / "ground_truth" / "crack"
        for i, image in enumerate(sorted((synthetic / "capsule" / "test" / "crack").glob("*.png"))[:4]):
            for src, target in ((image, base / "Images" / "Anomaly" / f"{i:03d}.JPG"),
                                (masks / f"{image.stem}_mask.png", base / "Masks" / "Anomaly" / f"{i:03d}.png")):
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(src, target)
            rows.append(f"{cat},test,anomaly,{cat}/Data/Images/Anomaly/{i:03d}.JPG,{cat}/Data/Masks/Anomaly/{i:03d}.png")
    (root / "split_csv").mkdir(parents=True, exist_ok=True)
    (root / "split_csv" / "1cls.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture(scope="session")
def trees(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("trees")
    visa_tree(folder / "visa", synthetic_root)
    (folder / "mvtec").mkdir()  # MVTec AD's layout is the synthetic set's: its capsules play the README's bottle
    for category in ("bottle", "capsule"):
        (folder / "mvtec" / category).symlink_to(synthetic_root / "capsule")
    return folder


WORKSPACES: dict[str, Workspace] = {}


@pytest.fixture()
def workspace(request: pytest.FixtureRequest, synthetic_root: Path, trees: Path,
              tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """The working directory of this command's chain (a new, empty one for a command of its own)."""
    command = request.node.callspec.params["command"]
    name = chain_of(command)
    if name not in WORKSPACES or name == command:
        WORKSPACES[name] = Workspace(tmp_path_factory.mktemp("user") / "work", synthetic_root, trees)
        # The user ran `make train` before: the embedded data set sits at its default place, data/synthetic.
        if command != "python -m anomaly.train":
            (WORKSPACES[name].path / "data").mkdir()
            (WORKSPACES[name].path / "data" / "synthetic").symlink_to(synthetic_root)
    ws = WORKSPACES[name]
    # What the chain's earlier commands leave (runs, exports): made here if this process has not run them yet
    # (`make test` runs only the everyday commands; a worker may get a chain's later commands alone).
    chain = [c for c in COMMANDS if chain_of(c) == name and c not in NOT_HERE]
    for earlier in chain[:chain.index(command)]:
        if earlier not in ws.done and earlier.split()[2] in ("anomaly.train", "anomaly.export"):
            run_in(earlier, ws, ws.path / f"before_{len(ws.done)}")
    return ws


# -- running a command ----------------------------------------------------------------------------------------

def tiny(module: str, command: str, ws: Workspace) -> list[str]:
    """The overrides appended to a command to make it tiny and offline here (the command's own categories stay)."""
    extra = [o.format(synthetic=ws.synthetic) for key, values in EXTRA.items() if key in command for o in values]
    base = list(TINY.get(module, []))
    if "data.category=" in command or any(o.startswith("data.category=") for o in extra):
        base = [o for o in base if not o.startswith("data.category=")]
    return base + extra


def run_command(text: str, cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess[str]:
    """``text`` in a shell-like split, run with this interpreter from ``cwd``; the user's own environment."""
    argv = shlex.split(text)
    assert argv[:2] == ["python", "-m"], text
    env = {k: v for k, v in os.environ.items() if k != "ANOMALY_ROOT"}
    env["OMP_NUM_THREADS"] = env.get("OMP_NUM_THREADS", "1")
    return subprocess.run([sys.executable, *argv[1:]], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def check_outcome(command: str, text: str, done: subprocess.CompletedProcess[str], ws: Workspace,
                  before: set[Path], tmp: Path) -> None:
    """What the user expects to find after ``command`` (run as ``text``)."""
    assert done.returncode == 0, f"`{command}` exited {done.returncode}:\n{done.stderr[-4000:]}"
    assert "Traceback" not in done.stderr, f"`{command}` printed a traceback:\n{done.stderr[-4000:]}"
    module = command.split()[2]
    if module == "anomaly.train":
        args = shlex.split(text)[3:]
        sweep = "-m" in args or "--multirun" in args
        pattern = "outputs/multirun/*" if sweep else "outputs/**/manifest.json"
        given = [a.split("=", 1)[1] for a in args if a.startswith(f"hydra.{'sweep' if sweep else 'run'}.dir=")]
        if given:
            folders = [ws.path / given[-1] / ("" if sweep else "manifest.json")]
        elif "ckpt_path=last" in args or any(a.startswith("ckpt_path=") and (ws.path / a[10:]).is_dir()
                                             for a in args):  # resumed in the folder of the run it continues
            assert not ws.new_folders(before, pattern), f"`{command}` started a new run instead of resuming"
            folders = [ws.runs["run"] / "manifest.json"]
        else:
            folders = ws.new_folders(before, pattern)
        assert folders, f"`{command}` wrote no run folder under {ws.path / 'outputs'}"
        if sweep:
            jobs = sorted(p for p in folders[-1].iterdir() if p.is_dir() and p.name[0].isdigit())
            assert len(jobs) >= 2, f"`{command}` ran {len(jobs)} job(s)"
            for job in jobs:
                assert json.loads((job / "manifest.json").read_text())["status"] == "finished", job
            ws.runs["sweep"] = folders[-1]
            return
        run = folders[-1].parent
        assert json.loads((run / "manifest.json").read_text())["status"] == "finished", run
        if "model=ddpm" in command or "experiment=ddpm" in command:
            ws.runs["ddpm"] = run
            assert (run / "checkpoints" / "last.ckpt").is_file()
            return
        if "model=contrastive" not in command:
            metrics = json.loads((run / "metrics.json").read_text())
            assert metrics["categories"], f"`{command}` tested no category"
        if command == "python -m anomaly.train":
            ws.runs["run"] = run
    elif module == "anomaly.evaluate":
        found = ws.new_folders(before, "outputs/evaluate/*/*/metrics.json")
        assert found, f"`{command}` wrote no metrics.json"
    elif module == "anomaly.report":
        found = ws.new_folders(before, "**/report.md")
        assert found, f"`{command}` wrote no report.md"
    elif module == "anomaly.predict":
        found = ws.new_folders(before, "**/scores.csv")
        assert found, f"`{command}` wrote no scores.csv"
        rows = found[0].read_text().splitlines()
        assert len(rows) > 1, f"`{command}` scored no image"
    elif module == "anomaly.export":
        assert "format=onnx" in command
        assert list(ws.runs["run"].glob("checkpoints/**/*.onnx")), f"`{command}` wrote no .onnx"
    elif module == "anomaly.synthesize":
        assert list(ws.path.glob("banks/**/*.png")), f"`{command}` left no bank image"  # a resumed bank adds none
    elif module == "anomaly.gallery":
        assert ws.new_folders(before, "**/gallery.png"), f"`{command}` wrote no gallery.png"


@pytest.mark.parametrize("command", [pytest.param(c, marks=marks(c)) for c in COMMANDS])
def test_readme_command(command: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    module = command.split()[2]
    assert importlib.util.find_spec(module) is not None, f"the README documents `{command}`, but {module} does not exist"
    if command in NOT_HERE:
        compose_as_printed(command, tmp_path)
        return
    run_in(command, request.getfixturevalue("workspace"), tmp_path)


def run_in(command: str, ws: Workspace, tmp: Path) -> None:
    """Run a README command in the workspace, as printed plus the tiny overrides, and check what it left."""
    module = command.split()[2]
    text = f"{ws.fill(command, tmp)} {' '.join(tiny(module, command, ws))}"
    before = set(ws.path.glob("**/*"))
    done = run_command(text, ws.path)
    check_outcome(command, text, done, ws, before, tmp)
    ws.done.add(command)


# -- composing what cannot run here ---------------------------------------------------------------------------

def config_name(module: str) -> str:
    source = Path(importlib.util.find_spec(module).origin).read_text()
    found = re.search(r"config_name=\"(\w+)\"", source)
    assert found, f"{module} is not a Hydra main"
    return found[1]


def compose_as_printed(command: str, tmp_path: Path) -> None:
    """Precheck, compose (a sweep's first job) and target-check the command exactly as printed."""
    from anomaly.config.check import check_targets
    from anomaly.config.precheck import precheck

    module = command.split()[2]
    args = shlex.split(command)[3:]
    flags = [a for a in args if a.startswith("-")]
    overrides = [a for a in args if not a.startswith("-")]
    name = config_name(module)
    precheck(name, [*flags, *overrides])
    first = [o if "=" not in o or o.split("=", 1)[0].startswith("hydra.") or "[" in o
             else f"{o.split('=', 1)[0]}={o.split('=', 1)[1].split(',')[0]}" for o in overrides]
    GlobalHydra.instance().clear()
    with initialize_config_module("anomaly.conf", version_base="1.3"):
        cfg = compose(name, overrides=first, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(tmp_path / "out")
        cfg.hydra.runtime.cwd = str(tmp_path)
    HydraConfig.instance().set_config(cfg)  # ${hydra:...} resolves as in a job
    try:
        with open_dict(cfg):
            del cfg["hydra"]
        check_targets(cfg)
    finally:  # no job config left behind for the next test in this process
        HydraConfig.instance().cfg = None
        GlobalHydra.instance().clear()
