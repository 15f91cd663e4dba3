"""Every ``python -m anomaly.<module>`` command the README shows exists and composes; the ones that can
run here on tiny data do run.

Commands come from the README's ``bash`` blocks and from inline code that starts with ``python -m
anomaly.`` (optionally after ``OMP_NUM_THREADS=1``). Each is one parametrised case:

- ``run``: executed in this process with tiny overrides (one small category, 64 px): the default train,
  ``evaluate`` on its run, ``report`` on it. Sweeps, Optuna, resume and the W&B logger run in
  ``tests/test_sweep.py`` / ``tests/test_wandb_logging.py`` with the same tiny overrides.
- ``compose``: everything else — commands that need data sets or weights not on this machine
  (``data.root=/data/...``, hub presets, SD-1.5), a cluster (SLURM), a GPU, a trained checkpoint of another
  method, or that train for minutes (the CPU presets): the module must exist, the command line must pass
  the precheck (groups, keys, plugins) and the config must compose and pass the target check — what
  ``--cfg job`` checks — within the suite's time budget.

A command whose module does not exist (yet) fails with that sentence.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

pytestmark = pytest.mark.one_thread

README = Path(__file__).resolve().parents[1] / "README.md"
TINY = ["data.category=capsule", "data.image_size=64", "data.crop_size=null", "data.num_workers=0",
        "data.prepare=null", "callbacks.heatmaps.n_images=1"]
RUN = {"python -m anomaly.train", "python -m anomaly.evaluate ckpt_path=<run> evaluator=binned",
       "python -m anomaly.evaluate ckpt_path=outputs/runs/<date>/<time>_padim_synthetic", "python -m anomaly.report <sweep>",
       "python -m anomaly.report outputs/runs output=reports/all wandb=true"}


def readme_commands() -> list[str]:
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


def test_the_readme_shows_commands() -> None:
    assert len(COMMANDS) > 20 and "python -m anomaly.report <sweep>" in COMMANDS


@pytest.fixture(scope="module")
def tiny_run(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The README's first command, ``python -m anomaly.train``, with tiny overrides."""
    work = tmp_path_factory.mktemp("readme")
    hydra_main("anomaly.train", [f"data.root={synthetic_root}", *TINY, f"hydra.run.dir={work / 'run'}"], work)
    return work / "run"


def hydra_main(module: str, argv: list[str], root: Path) -> None:
    GlobalHydra.instance().clear()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ANOMALY_ROOT", str(root))
        patch.setattr(sys, "argv", [module, *argv])
        importlib.import_module(module).main()
    GlobalHydra.instance().clear()


def config_name(module: str) -> str:
    source = Path(importlib.util.find_spec(module).origin).read_text()
    found = re.search(r"config_name=\"(\w+)\"", source)
    assert found, f"{module} is not a Hydra main"
    return found[1]


@pytest.mark.parametrize("command", COMMANDS)
def test_readme_command(command: str, synthetic_root: Path, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    module = command.split()[2]
    assert importlib.util.find_spec(module) is not None, f"the README documents `{command}`, but {module} does not exist"
    if command in RUN:
        run = request.getfixturevalue("tiny_run")  # the run of `python -m anomaly.train` itself
        if command == "python -m anomaly.train":
            assert (run / "metrics.json").is_file() and (run / "manifest.json").is_file()
            return
        text = command.replace("outputs/runs/<date>/<time>_padim_synthetic", str(run))
        text = text.replace("outputs/runs", str(run.parent)).replace("reports/all", str(tmp_path / "report"))
        args = shlex.split(re.sub(r"<(run|sweep)>", str(run), text))[3:]
        if module == "anomaly.report":
            if not any(a.startswith("output=") for a in args):
                args.append(f"output={tmp_path / 'report'}")
            importlib.import_module(module).main(args)
            assert (tmp_path / "report" / "report.md").is_file()
        else:
            hydra_main(module, [*args, f"hydra.run.dir={tmp_path / 'out'}"], tmp_path)
            assert (tmp_path / "out" / "metrics.json").is_file()
        return
    args = shlex.split(re.sub(r"<[^>]+>", str(tmp_path / "placeholder"), command))[3:]  # <run>, <sweep> ...
    assert module != "anomaly.report", f"`{command}`: add it to RUN (report commands run, on the tiny run)"
    from anomaly.config.check import check_targets
    from anomaly.config.precheck import precheck

    flags = [a for a in args if a.startswith("-")]
    overrides = [a for a in args if not a.startswith("-")]
    extra_dirs = []
    if "--config-dir" in args:  # a user's folder: give it the option the command names
        folder = tmp_path / "my_conf"
        (folder / "data").mkdir(parents=True)
        (folder / "data" / "my_set.yaml").write_text("defaults:\n  - synthetic\n")
        extra_dirs = [f"hydra.searchpath=[file://{folder}]"]
        overrides = [o for o in overrides if o != args[args.index("--config-dir") + 1]]
    name = config_name(module)
    precheck(name, [*flags, *overrides, *extra_dirs])
    first = [o if "=" not in o or o.split("=", 1)[0].startswith("hydra.sweeper") or "[" in o
             else f"{o.split('=', 1)[0]}={o.split('=', 1)[1].split(',')[0]}" for o in overrides]
    GlobalHydra.instance().clear()
    with initialize_config_module("anomaly.conf", version_base="1.3"):
        cfg = compose(name, overrides=[*first, *extra_dirs], return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(tmp_path / "out")
    HydraConfig.instance().set_config(cfg)  # ${hydra:...} resolves as in a job
    with open_dict(cfg):
        del cfg["hydra"]
    check_targets(cfg)
