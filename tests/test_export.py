"""anomaly.export: the exported graph reproduces the checkpoint (ONNX Runtime, OpenVINO) within 1e-4 on the
same images; methods that cannot be exported and missing runtimes are one-sentence errors."""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import pytest
import torch

from anomaly.config.check import ConfigError
from anomaly.deploy import load
from anomaly.deploy.export import export_checkpoints
from tests.test_predict import trained_run

pytestmark = pytest.mark.one_thread


def parity(fmt: str, tmp_path: Path) -> None:
    run = trained_run("padim")
    (exported,) = export_checkpoints(run, fmt, output=tmp_path / f"padim{'.onnx' if fmt == 'onnx' else '.xml'}")
    reference, deployed = load(run), load(exported)
    assert deployed.thresholds == reference.thresholds  # the JSON beside the model carries them
    images = sorted((run.parent / "data" / "tile" / "test").rglob("*.png"))
    rgb = [reference.preprocess.rgb(p) for p in images]
    want, got = reference.predict(rgb), deployed.predict(rgb)
    assert max(abs(a.score - b.score) for a, b in zip(want, got, strict=True)) <= 1e-4
    assert max(float(np.abs(a.anomaly_map - b.anomaly_map).max()) for a, b in zip(want, got, strict=True)) <= 1e-4
    assert [a.decision for a in want] == [b.decision for b in got]


def test_onnx_runtime_reproduces_the_checkpoint(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    parity("onnx", tmp_path)


def test_openvino_reproduces_the_checkpoint(tmp_path: Path) -> None:
    pytest.importorskip("openvino")
    parity("openvino", tmp_path)


def test_a_method_whose_map_is_an_input_gradient_is_refused(tmp_path: Path) -> None:
    checkpoint = tmp_path / "flow.ckpt"
    torch.save({"state_dict": {}, "anomaly_method": "anomaly.models.flow.FlowDetector", "anomaly_config": {}},
               checkpoint)
    with pytest.raises(ConfigError, match="FlowDetector cannot be exported: its anomaly map is the gradient"):
        export_checkpoints(checkpoint, "onnx")


def test_a_missing_runtime_package_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = importlib.import_module

    def without_onnx(name: str, *args: object) -> object:
        if name.split(".")[0] == "onnx":
            raise ImportError(name)
        return real_import(name, *args)

    monkeypatch.setattr(importlib, "import_module", without_onnx)
    with pytest.raises(ConfigError, match=r"pip install 'anomaly\[export\]'"):
        export_checkpoints(trained_run("padim"), "onnx", output=tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()
