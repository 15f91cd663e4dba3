"""Where a model runs: its checkpoint in PyTorch, or an exported file in ONNX Runtime, OpenVINO, TorchScript.

Every runtime maps a float32 batch B×3×H×W (already preprocessed) to ``(maps B×1×H×W, scores B)``
as numpy arrays.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from anomaly.config.check import ConfigError
from anomaly.utils.errors import storage_error

#: Exported formats: file suffix, and the extra that installs their runtime.
FORMATS = {"onnx": (".onnx", "export"), "openvino": (".xml", "openvino"), "torchscript": (".pt", None)}


class Runtime(Protocol):
    """Runs a preprocessed batch."""

    def __call__(self, images: np.ndarray, categories: Sequence[str]) -> tuple[np.ndarray, np.ndarray]: ...


def require(module: str, extra: str, what: str) -> Any:
    """Import an optional runtime package, or one sentence naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"{what} needs the package '{module}', which is not installed; "
                          f"install it with pip install 'anomaly[{extra}]'.") from None


@contextmanager
def unreadable(path: Path, kind: str) -> Iterator[None]:
    """A runtime that cannot load ``path`` (corrupt, truncated, not that format) is one sentence naming it."""
    try:
        yield
    except Exception as error:  # noqa: BLE001 - each runtime raises its own types for a bad file
        if storage_error(error) is not None:
            raise
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        raise ConfigError(f"ckpt_path={path} is not a readable {kind} model ({reason}); export it again with "
                          "python -m anomaly.export ckpt_path=<run folder or .ckpt>, or give the checkpoint.") from error


class TorchRuntime:
    """A checkpoint's LightningModule: ``evaluate_batch`` (its ``score_batch``, calibration, finite check)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model.eval()

    def __call__(self, images: np.ndarray, categories: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        batch = {"image": torch.from_numpy(images), "category": list(categories),
                 "path": [f"<image {i}>" for i in range(len(images))]}
        with torch.inference_mode():
            output = self.model.evaluate_batch(batch)
        return output.anomaly_map.float().numpy(), output.score.float().numpy()


class OnnxRuntime:
    """An exported ``.onnx`` file in ONNX Runtime (CPU)."""

    def __init__(self, path: Path, threads: int | None = None) -> None:
        ort = require("onnxruntime", "export", f"ckpt_path={path}")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        with unreadable(path, "ONNX"):
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def __call__(self, images: np.ndarray, categories: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        anomaly_map, score = self.session.run(None, {"image": images})
        return anomaly_map, score


class OpenVinoRuntime:
    """An exported OpenVINO IR (``.xml`` + ``.bin``) or ``.onnx`` file, compiled for the CPU in float32."""

    def __init__(self, path: Path, threads: int | None = None) -> None:
        ov = require("openvino", "openvino", f"ckpt_path={path}")
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "f32"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        with unreadable(path, "OpenVINO"):
            self.compiled = ov.Core().compile_model(str(path), "CPU", config)

    def __call__(self, images: np.ndarray, categories: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        result = self.compiled([images])
        return np.asarray(result[0]), np.asarray(result[1])


class TorchScriptRuntime:
    """An exported TorchScript ``.pt`` file."""

    def __init__(self, path: Path) -> None:
        with unreadable(path, "TorchScript"):
            self.module = torch.jit.load(str(path), map_location="cpu").eval()

    def __call__(self, images: np.ndarray, categories: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        with torch.inference_mode():
            anomaly_map, score = self.module(torch.from_numpy(images))
        return anomaly_map.float().numpy(), score.float().numpy()


def exported_runtime(path: Path, runtime: str | None = None, threads: int | None = None) -> Runtime:
    """The runtime of an exported file, by its suffix (``runtime=openvino`` runs an ``.onnx`` in OpenVINO)."""
    suffix = path.suffix.lower()
    if suffix == ".xml" or runtime == "openvino":
        return OpenVinoRuntime(path, threads)
    if suffix == ".onnx":
        return OnnxRuntime(path, threads)
    if suffix == ".pt":
        return TorchScriptRuntime(path)
    raise ConfigError(f"ckpt_path={path} is not an exported model (.onnx, .xml, .pt) nor a checkpoint; "
                      "give a .ckpt, a run folder or a file written by anomaly.export.")
