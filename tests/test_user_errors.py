"""Issue 36 items 6 and 7: mistakes a user makes on the command line or the machine end with one sentence
``Error: ...`` (exit code 1, no traceback), and the small things a user notices (file modes, header, recipe
line, upscaled images). In-process checks go through the entry points' own functions (``precheck``,
``check_targets``, ``user_errors``); the read-only folder runs as a user would, in a subprocess."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.utils import instantiate

from anomaly.config.check import ConfigError, check_targets
from anomaly.config.precheck import precheck
from anomaly.data.errors import DataError
from anomaly.utils.errors import user_errors

ROOT = Path(__file__).resolve().parents[1]
TINY = ["data.category=capsule", "data.image_size=64", "data.crop_size=null", "data.num_workers=0",
        "model.backbone.weights=none"]


def error_lines(run: Callable[[], object], capsys: pytest.CaptureFixture[str]) -> list[str]:
    """What ``user_errors`` prints for ``run``, checking exit code 1 and that nothing else is printed."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited, user_errors():
        run()
    assert exited.value.code == 1
    return capsys.readouterr().err.splitlines()


# ------------------------------------------------------------------ item 6: values checked before work
@pytest.mark.parametrize(("override", "sentence"), [
    ("data.batch_size=abc", "data.batch_size=abc is not valid: data.batch_size takes a whole number of 1 or more; "
                            "e.g. data.batch_size=32."),
    ("data.batch_size=0", "data.batch_size=0 is not valid: data.batch_size takes a whole number of 1 or more; "
                          "e.g. data.batch_size=32."),
    ("trainer.max_epochs=-5", "trainer.max_epochs=-5 is not valid: trainer.max_epochs takes a whole number of 0 or "
                              "more, or -1 for no limit; e.g. trainer.max_epochs=10."),
    ("data.batch_size=8,0", "data.batch_size=0 is not valid"),  # every value of a sweep
    ("data.val_fraction=1.5", "data.val_fraction=1.5 is not valid: data.val_fraction takes a number strictly "
                              "between 0 and 1"),
])
def test_bad_numeric_values_stop_before_hydra(override: str, sentence: str) -> None:
    with pytest.raises(ConfigError) as raised:
        precheck("train", [*TINY, override])
    assert str(raised.value).startswith(sentence)


def test_good_numeric_values_pass() -> None:
    precheck("train", [*TINY, "trainer.max_epochs=-1", "data.batch_size=1", "+trainer.limit_train_batches=0.5",
                       "+trainer.limit_val_batches=3", "data.image_size=[64,48]", "data.num_workers=0"])


def test_a_bad_value_in_a_config_file_stops_the_run_before_work() -> None:
    # fit() starts with check_targets: values set by an experiment or a user's YAML are checked there.
    with initialize_config_module("anomaly.conf", version_base="1.3"):
        cfg = compose("train", overrides=["data.batch_size=0"])
    with pytest.raises(ConfigError, match=r"^data.batch_size=0 is not valid"):
        check_targets(cfg)


def test_an_unquoted_value_with_a_space_says_to_quote_it() -> None:
    with pytest.raises(ConfigError) as raised:
        precheck("predict", ["ckpt_path=run", "input=/tmp/my", "images/"])
    assert str(raised.value) == ("'images/' is not a key=value override: the shell split 'input=/tmp/my images/' "
                                 "at a space; quote a value that holds spaces: 'input=/tmp/my images/'.")


# ------------------------------------------------------------------ item 6: files and folders
def test_a_garbage_onnx_file_is_one_sentence(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("onnxruntime")
    from anomaly.deploy.runtimes import exported_runtime

    model = tmp_path / "x.onnx"
    model.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    (lines,) = [error_lines(lambda: exported_runtime(model), capsys)]
    assert len(lines) == 1
    assert lines[0].startswith(f"Error: ckpt_path={model} is not a readable ONNX model (")
    assert lines[0].endswith("export it again with python -m anomaly.export ckpt_path=<run folder or .ckpt>, "
                             "or give the checkpoint.")


def test_a_full_disk_names_the_folder_and_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    # torch.save on a full disk raises RuntimeError("unexpected pos ...") over the write's OSError: /dev/full
    # gives the real ENOSPC to the real torch.save, inside the checkpoint writer Lightning calls.
    if not Path("/dev/full").exists():
        pytest.skip("needs /dev/full")
    from anomaly.callbacks.checkpoint_io import AtomicCheckpointIO

    real_save = torch.save

    def save_on_full_disk(obj: object, handle: object, *args: object, **kwargs: object) -> None:
        with open("/dev/full", "wb") as full:
            real_save(obj, full, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_on_full_disk)
    folder = tmp_path / "run" / "checkpoints"
    lines = error_lines(lambda: AtomicCheckpointIO().save_checkpoint({"w": torch.zeros(10_000)},
                                                                      folder / "last.ckpt"), capsys)
    assert lines == [f"Error: no space left on {folder} (writing last.ckpt); free some space there or write "
                     "elsewhere (paths.log_dir=<folder> for a run's folder, output=<path> for predict and export)."]
    assert list(folder.iterdir()) == []


def test_an_output_folder_under_a_file_is_one_sentence(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from anomaly.deploy.export import export_checkpoints
    from tests.test_predict import run_predict, trained_run

    run = trained_run("padim")
    blocker = tmp_path / "results"
    blocker.write_text("a file where the user meant a folder")
    images = run.parent / "data" / "tile" / "test"
    want = [f"Error: {blocker} is a file, not a folder; choose another folder (paths.log_dir=<folder> for a run's "
            "folder, output=<path> for predict and export)."]
    assert error_lines(lambda: run_predict(run, images, blocker / "predict"), capsys) == want
    pytest.importorskip("onnxruntime")
    assert error_lines(lambda: export_checkpoints(run, "onnx", output=blocker / "m.onnx"), capsys) == want


def _as_user_without_root_override() -> list[str]:
    """A prefix that runs a command without root's power to write into read-only folders (nothing if not root)."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("running as root needs setpriv to make a read-only folder read-only")
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]


def test_read_only_output_folders_are_one_sentence(tmp_path: Path) -> None:
    """train from a folder whose outputs/ is read-only, and export into a read-only folder (it blamed ONNX)."""
    pytest.importorskip("onnxruntime")
    from tests.test_predict import trained_run

    prefix = _as_user_without_root_override()
    work = tmp_path / "work"
    (work / "outputs").mkdir(parents=True)
    (work / "outputs").chmod(0o555)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    env = {k: v for k, v in os.environ.items() if k not in ("ANOMALY_ROOT", "HYDRA_FULL_ERROR")}
    commands = {
        "train": [sys.executable, "-m", "anomaly.train", f"data.root={tmp_path / 'data'}", *TINY],  # not read:
        # the run stops while its folder is made
        "export": [sys.executable, "-m", "anomaly.export", f"ckpt_path={trained_run('padim')}",
                   f"output={locked / 'm.onnx'}"],
    }
    folders = {"train": work / "outputs", "export": locked}
    try:
        for name, command in commands.items():
            result = subprocess.run([*prefix, *command], cwd=work, env=env, capture_output=True, text=True,
                                    timeout=300)
            assert result.returncode == 1, (name, result.stderr[-2000:])
            assert result.stderr.strip().splitlines()[-1:] == [
                f"Error: {folders[name]} is not writable (permission denied); choose another folder "
                "(paths.log_dir=<folder> for a run's folder, output=<path> for predict and export)."], name
            assert "Traceback" not in result.stderr
    finally:
        for folder in folders.values():
            folder.chmod(0o755)


def test_a_mistyped_synthetic_root_is_an_error_not_a_new_data_set(tmp_path: Path) -> None:
    typo = tmp_path / "typo" / "x"
    with initialize_config_module("anomaly.conf", version_base="1.3"):
        cfg = compose("train", overrides=[f"data.root={typo}", f"paths.root_dir={tmp_path}"])
    prepare = instantiate(cfg.data.prepare)
    with pytest.raises(DataError) as raised:
        prepare(str(typo))
    assert str(raised.value) == (
        f"data.root={typo} does not exist (the synthetic set is generated only at its default place, "
        f"{tmp_path / 'data' / 'synthetic'}); fix data.root, or add data.prepare.generate=true to generate the "
        "set there.")
    assert not typo.parent.exists()
    asked = instantiate(cfg.data.prepare, generate=True, image_size=32, n_train=1, n_test_good=1,
                        n_test_defect_per_type=1, categories=["wood"])
    assert (asked(str(typo)) / "wood" / "train").is_dir()  # generated where the user asked for it


# ------------------------------------------------------------------ item 7: small things a user notices
def test_run_files_honour_the_umask(tmp_path: Path) -> None:
    from anomaly.utils.atomic import atomic_write_json

    old = os.umask(0o022)
    try:
        atomic_write_json(tmp_path / "metrics.json", {"a": 1})
        os.umask(0o077)
        atomic_write_json(tmp_path / "private.json", {"a": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "metrics.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "private.json").stat().st_mode) == 0o600


def test_evaluate_header_names_the_data_root(capsys: pytest.CaptureFixture[str]) -> None:
    from omegaconf import OmegaConf

    from anomaly.engine.console import header

    header(OmegaConf.create({"model": {"_target_": "anomaly.models.padim.Padim"}, "data": {"root": "/d/mvtec"}}),
           "separate", ["bottle"], Path("/out"))
    assert capsys.readouterr().out.splitlines()[0] == "Padim · data.root=/d/mvtec · separate · bottle → /out"


def test_recipe_line_leaves_out_what_the_user_set(monkeypatch: pytest.MonkeyPatch) -> None:
    from hydra.core.hydra_config import HydraConfig

    from anomaly.engine.console import recipe

    with initialize_config_module("anomaly.conf", version_base="1.3"):
        cfg = compose("train", overrides=["model=padim", "data.crop_size=null"], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    try:
        shown = recipe(cfg)
    finally:
        HydraConfig.instance().cfg = None
    assert "data.crop_size" not in shown  # the user typed it: not repeated as the model's recipe
    assert shown.get("data.val") == "none"  # what PaDiM's recipe sets and the user did not


def test_a_small_image_is_named_once_per_size(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from anomaly.deploy.preprocess import Preprocess

    paths = []
    # 11 px is under half of 64 (named once); 40 px is upscaled less than twice (a preset's choice: not named)
    for name, side in (("tiny.png", 11), ("tiny2.png", 11), ("mild.png", 40), ("big.png", 80)):
        assert cv2.imwrite(str(tmp_path / name), np.full((side, side, 3), 128, np.uint8))
        paths.append(tmp_path / name)
    preprocess = Preprocess(64, None)
    capsys.readouterr()
    for path in paths:
        assert preprocess(path).shape == (3, 64, 64)
    assert capsys.readouterr().err.splitlines() == [
        f"warning: {paths[0]} is 11×11 px, under half the model's input 64×64: it is upscaled and its score is "
        "less reliable (other 11×11 images are not named)."]
