"""Export a checkpoint's pure inference (``forward(image) -> (anomaly_map, score)``) to ONNX, OpenVINO or
TorchScript, with its preprocessing and thresholds in a JSON file beside it.

Generic over ``forward``: any method whose forward is its whole inference exports (PaDiM; RealNet through
torch.export, checked on an untrained model).
After writing, the exported model is run on a batch and compared with the checkpoint's own
``evaluate_batch``; a graph that does not reproduce it (tolerance ``PARITY``) is deleted and refused.
"""

from __future__ import annotations

import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from anomaly.config.check import ConfigError
from anomaly.deploy.detector import choose_checkpoint, metadata_path, read_run_checkpoint
from anomaly.deploy.preprocess import Preprocess
from anomaly.deploy.runtimes import FORMATS, TorchRuntime, exported_runtime, require
from anomaly.deploy.sources import ensure_thresholds, resolve_source
from anomaly.deploy.thresholds import pick
from anomaly.engine.checkpoints import load_method, method_of
from anomaly.engine.run import selected_checkpoints
from anomaly.models.base import AnomalyModule
from anomaly.utils.atomic import atomic_write_json, check_writable
from anomaly.utils.errors import storage_error

#: Largest |exported - checkpoint| accepted, relative to the largest map value (float32 reordering).
PARITY = 1e-4

#: Methods whose forward cannot become a static graph, and why (one sentence each).
NOT_EXPORTABLE = {
    "anomaly.models.flow.FlowDetector": "its anomaly map is the gradient of the score with respect to the input "
    "image, and ONNX, OpenVINO and TorchScript graphs hold no autograd",
    "anomaly.models.diad.DiAD": "its DDIM start noise comes from torch's generator seeded with a CRC32 of each "
    "image's bytes (so a score never depends on its batch), which no ONNX/OpenVINO graph can reproduce — a traced "
    "graph would freeze the example image's noise — so predict runs its checkpoint in PyTorch",
}


def export_checkpoints(ckpt_path: str | Path, fmt: str, output: str | Path | None = None,
                       category: str | None = None, threshold_source: str = "auto", opset: int = 17) -> list[Path]:
    """Export the checkpoint (or each per-category checkpoint of a run folder, or ``category``'s)."""
    if fmt not in FORMATS:
        raise ConfigError(f"format={fmt} is not one of {', '.join(FORMATS)}.")
    path = Path(ckpt_path).expanduser()
    checkpoints = [choose_checkpoint(path, category)] if category else selected_checkpoints(path)
    written = []
    for checkpoint in checkpoints:
        target = Path(output) if output is not None else None
        if target is not None and len(checkpoints) > 1:
            target = target / checkpoint.parent.name / f"model{FORMATS[fmt][0]}"
        written.append(export_checkpoint(checkpoint, fmt, target, threshold_source, opset))
    return written


def export_checkpoint(checkpoint: Path, fmt: str, output: Path | None = None, threshold_source: str = "auto",
                      opset: int = 17) -> Path:
    """Export one checkpoint to ``output`` (default: beside it, ``<name>.<suffix>``) plus ``<name>.json``."""
    payload = read_run_checkpoint(checkpoint)
    method = method_of(payload, checkpoint)
    name = str(payload.get("anomaly_method"))
    if name in NOT_EXPORTABLE:
        raise ConfigError(f"{method.__name__} cannot be exported: {NOT_EXPORTABLE[name]}.")
    model = load_method(checkpoint).eval()
    if model.calibration is not None:
        raise ConfigError(f"ckpt_path={checkpoint} was trained with model.calibrate=true, whose per-category "
                          "statistics are fitted outside forward(image); export a model trained with "
                          "model.calibrate=false, or predict with the checkpoint.")
    suffix, extra = FORMATS[fmt]
    output = output if output is not None else checkpoint.with_suffix(suffix)
    if output.suffix.lower() != suffix:
        raise ConfigError(f"output={output} must end in {suffix} for format={fmt}.")
    check_writable(output.parent)  # a read-only or full folder is one sentence, before any work
    preprocess = Preprocess.from_data_config(payload["anomaly_config"]["data"])
    categories = [str(c) for c in payload.get("anomaly_categories") or []]
    category = categories[0] if len(categories) == 1 else None
    source = resolve_source(payload, threshold_source, checkpoint)
    thresholds = pick(ensure_thresholds(checkpoint, payload, model, source), source, category,
                      f"ckpt_path={checkpoint}")
    height, width = preprocess.input_shape()
    example = torch.zeros(1, 3, height, width)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer notes on shape checks that are constants of the graph
        if fmt == "onnx":
            _to_onnx(model, example, output, opset)
        elif fmt == "openvino":
            _to_openvino(model, example, output, opset)
        else:
            model.to_torchscript(file_path=str(output), method="trace", example_inputs=example)
    difference = _parity(model, output, preprocess, category or "", height, width)
    meta = {"format": fmt, "method": name, "checkpoint": str(checkpoint), "category": category or "",
            "categories": categories, "input": {"name": "image", "shape": ["batch", 3, height, width]},
            "outputs": ["anomaly_map", "score"], "preprocess": preprocess.to_dict(),
            "thresholds": thresholds.to_dict(), "parity_max_abs_difference": difference,
            "torch": torch.__version__}
    atomic_write_json(metadata_path(output), meta)
    print(f"export: {output} (+ {metadata_path(output).name}); max |exported - checkpoint| = {difference:.2e} "
          f"on 2 images; thresholds from {thresholds.source}", file=sys.stderr)
    return output


def _to_onnx(model: AnomalyModule, example: torch.Tensor, output: Path, opset: int) -> None:
    """torch's TorchScript-based ONNX exporter (fast; torch.export cannot take PaDiM's data-dependent "is it
    fitted" check), else torch.export (``dynamo=True``: graphs whose shapes the tracer loses, e.g. RealNet's)."""
    require("onnx", "export", "format=onnx")
    require("onnxscript", "export", "format=onnx")
    names = {"input_names": ["image"], "output_names": ["anomaly_map", "score"]}
    example = example.expand(2, *example.shape[1:]).contiguous()  # a batch of 2: the batch axis stays dynamic
    try:
        axes = {"image": {0: "batch"}, "anomaly_map": {0: "batch"}, "score": {0: "batch"}}
        model.to_onnx(str(output), example, **names, dynamic_axes=axes, opset_version=opset, dynamo=False)
    except Exception as first:  # noqa: BLE001 - the TorchScript exporter raises many types; torch.export decides
        if storage_error(first) is not None:
            raise  # the folder, not the graph: user_errors names it
        try:
            batch = torch.export.Dim("batch", min=1, max=4096)
            model.to_onnx(str(output), example, **names, dynamic_shapes={"image": {0: batch}},
                          opset_version=max(opset, 18), dynamo=True)
        except Exception as second:  # noqa: BLE001
            raise ConfigError(
                f"{type(model).__name__}'s forward(image) cannot be exported to ONNX (TorchScript exporter: "
                f"{_first_line(first)}; torch.export: {_first_line(second)})."
            ) from second


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:200]


def _to_openvino(model: AnomalyModule, example: torch.Tensor, output: Path, opset: int) -> None:
    ov = require("openvino", "openvino", "format=openvino")
    with tempfile.TemporaryDirectory(dir=output.parent) as folder:
        onnx_file = Path(folder) / "model.onnx"
        _to_onnx(model, example, onnx_file, opset)
        ov.save_model(ov.convert_model(str(onnx_file)), str(output), compress_to_fp16=False)


def _parity(model: AnomalyModule, exported: Path, preprocess: Preprocess, category: str, height: int,
            width: int) -> float:
    """Max |exported - checkpoint| over maps and scores of two seeded images; refuse beyond ``PARITY``."""
    images = np.random.default_rng(0).normal(size=(2, 3, height, width)).astype(np.float32)
    want_map, want_score = TorchRuntime(model)(images, [category] * 2)
    got_map, got_score = exported_runtime(exported)(images, [category] * 2)
    difference = float(max(np.abs(got_map - want_map).max(), np.abs(got_score - want_score).max()))
    scale = max(1.0, float(np.abs(want_map).max()))
    if not difference <= PARITY * scale:
        for file in (exported, exported.with_suffix(".bin")):
            file.unlink(missing_ok=True)
        raise ConfigError(f"the exported {exported.name} does not reproduce the checkpoint (max difference "
                          f"{difference:.3g} > {PARITY * scale:.3g}); its forward(image) is not its whole inference, "
                          "so predict with the checkpoint instead.")
    return difference

