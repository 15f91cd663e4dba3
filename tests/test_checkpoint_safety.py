"""A checkpoint (and an exported model's JSON, a weights file) is data: what it names is checked against the
allow-list (``anomaly.config.targets``) before anything is imported or built. A tiny genuine PaDiM run is
doctored as an attacker would: its stored config names ``numpy.savetxt`` writing a file; every loader, as a
user runs it, stops with one sentence and the file is never written."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from anomaly.deploy import load
from tests.test_predict import trained_run

pytestmark = pytest.mark.one_thread


def savetxt(target: Path) -> dict[str, Any]:
    """A config node that writes ``target`` when instantiated."""
    return {"_target_": "numpy.savetxt", "fname": str(target), "X": [0], "comments": "", "header": "x"}


def doctor(folder: Path, edit: Callable[[dict[str, Any], Path], None]) -> tuple[Path, Path]:
    """A copy of the tiny run's checkpoint changed by ``edit(payload, pwned)``: ``(checkpoint, pwned)``."""
    payload = torch.load(trained_run("padim") / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    pwned = folder / "pwned.txt"
    edit(payload, pwned)
    payload.pop("anomaly_thresholds", None)  # loaders that compute thresholds build the run's data module
    torch.save(payload, folder / "doctored.ckpt")
    return folder / "doctored.ckpt", pwned


def backbone(payload: dict[str, Any], pwned: Path) -> None:
    payload["hyper_parameters"]["backbone"] = savetxt(pwned)


def refused_once(result: subprocess.CompletedProcess, named: str) -> None:
    """Exit code 1, one ``Error:`` line naming what was refused, no traceback."""
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert result.returncode == 1, result.stderr[-2000:]
    assert len(errors) == 1 and named in errors[0] and "allow-list" in errors[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr


def run(module: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("command", ["evaluate", "predict", "export", "train"])
def test_every_command_refuses_a_checkpoint_naming_code(command: str, tmp_path: Path) -> None:
    checkpoint, pwned = doctor(tmp_path, backbone)
    data = trained_run("padim").parent / "data"
    args = {
        "evaluate": [f"ckpt_path={checkpoint}"],
        "predict": [f"ckpt_path={checkpoint}", f"input={data / 'tile' / 'test'}"],
        "export": [f"ckpt_path={checkpoint}", "format=onnx", f"output={tmp_path / 'model.onnx'}"],
        # the command line names PaDiM itself: the checkpoint's backbone is still the file's
        "train": ["data=mvtec", f"data.root={data}", "data.category=tile", "data.image_size=32", "data.crop_size=null",
                  "data.num_workers=0", "model.backbone.weights=none", "model.n_features=16", f"ckpt_path={checkpoint}"],
    }[command]
    result = run(f"anomaly.{command}", *args, cwd=tmp_path / "work")
    refused_once(result, "numpy.savetxt")
    assert not pwned.exists()


def _args(payload: dict[str, Any], pwned: Path) -> None:  # a nested target smuggled as a positional argument
    payload["hyper_parameters"]["backbone"]["_args_"] = [savetxt(pwned)]


def _interpolation(payload: dict[str, Any], pwned: Path) -> None:  # a target that reads "numpy.savetxt" once resolved
    payload["hyper_parameters"]["backbone"] = {**savetxt(pwned), "_target_": "${.header}", "header": "numpy.savetxt"}


def _data(payload: dict[str, Any], pwned: Path) -> None:  # the run config's data module, built with synthesis=None
    payload["anomaly_config"]["data"] = {"_target_": "builtins.dict", "inner": savetxt(pwned)}


@pytest.mark.parametrize("edit", [backbone, _args, _interpolation, _data], ids=["backbone", "args", "interpolation", "data"])
def test_deploy_load_refuses_before_building_anything(edit: Callable[[dict[str, Any], Path], None], tmp_path: Path) -> None:
    checkpoint, pwned = doctor(tmp_path, edit)
    with pytest.raises(ValueError, match="allow-list|interpolation") as raised:
        load(checkpoint)
    assert "\n" not in str(raised.value) and "nothing was built" in str(raised.value)
    assert not pwned.exists()


def test_lightning_load_from_checkpoint_checks_the_file_too(tmp_path: Path) -> None:
    """``Method.load_from_checkpoint(path)``, the Lightning API the README names, builds the same hyperparameters."""
    from anomaly.models.padim import Padim

    checkpoint, pwned = doctor(tmp_path, backbone)
    with pytest.raises(ValueError, match="'numpy.savetxt' at hyper_parameters.backbone._target_, which is not on"):
        Padim.load_from_checkpoint(checkpoint, weights_only=True)
    assert not pwned.exists()
    assert Padim.load_from_checkpoint(trained_run("padim") / "checkpoints" / "last.ckpt", weights_only=True).hparams.n_features == 16


def test_a_method_name_imports_nothing_off_the_allow_list(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """``anomaly_method: this.Zen``: importing the stdlib module ``this`` prints the Zen of Python — a module's
    import already runs its code, so the name is checked before anything is imported."""
    assert "this" not in sys.modules
    checkpoint, _ = doctor(tmp_path, lambda payload, pwned: payload.update(anomaly_method="this.Zen"))
    with pytest.raises(ValueError, match="'this.Zen' at anomaly_method, which is not on the allow-list"):
        load(checkpoint)
    assert "Beautiful is better than ugly" not in capfd.readouterr().out and "this" not in sys.modules


def test_exported_json_and_weights_file_are_checked_too(tmp_path: Path) -> None:
    """The JSON beside an exported model and a backbone ``weights`` file name no code either (the JSON is
    refused before the model file is opened)."""
    model = tmp_path / "model.onnx"
    model.write_bytes(b"not opened")
    meta = {"thresholds": {}, "preprocess": {"image_size": 32, "extra": savetxt(tmp_path / "pwned.txt")}}
    (tmp_path / "model.onnx.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="model.onnx.json names 'numpy.savetxt' at preprocess.extra._target_"):
        load(model)
    from anomaly.nn.backbone import FeatureExtractor

    checkpoint, _ = doctor(tmp_path, backbone)
    with pytest.raises(ValueError, match="model.backbone.weights=.* names 'numpy.savetxt'"):
        FeatureExtractor("efficientnet_lite0", ["blocks.1"], weights=str(checkpoint))


def test_the_allow_list_admits_our_classes_and_shipped_targets_only() -> None:
    from anomaly.config.targets import is_allowed

    assert all(is_allowed(name) for name in ("anomaly.models.padim.Padim", "anomaly.nn.backbone.FeatureExtractor",
                                             "lightning.pytorch.callbacks.ModelCheckpoint",
                                             "anomaly.data.datamodule.AnomalyDataModule"))
    assert not any(is_allowed(name) for name in ("numpy.savetxt", "os.system", "anomaly.utils.atomic.atomic_write_json",
                                                 "anomaly.engine.manifest.Manifest", "anomaly.nn.backbone.torch.save",
                                                 "anomaly.nn.backbone.nn.Linear", "builtins.eval", 42))
