"""Export a trained model: ``python -m anomaly.export ckpt_path=<ckpt | run folder> format=onnx|openvino|torchscript``.

Writes the pure inference graph (image → anomaly map, score) beside each checkpoint (``last.onnx``,
``best.xml`` + ``.bin``, ``last.pt``) unless ``output=`` is given, and ``<name>.json`` beside it with the
checkpoint's preprocessing and thresholds (``threshold_source``), which ``anomaly.predict`` and
``anomaly.deploy.load`` read. Each export is checked against the checkpoint on two images. The work is
done by ``anomaly.deploy.export``.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

from anomaly.config.precheck import launch
from anomaly.deploy.export import export_checkpoints
from anomaly.engine.console import quiet_lightning
from anomaly.utils.errors import user_errors


def export(cfg: DictConfig) -> list[Path]:
    """Export the checkpoint(s) of ``cfg.ckpt_path`` to ``cfg.format`` (see ``conf/export.yaml``)."""
    quiet_lightning()
    return export_checkpoints(cfg.ckpt_path, str(cfg.format), cfg.output, cfg.category, cfg.threshold_source,
                              int(cfg.opset))


@hydra.main(version_base="1.3", config_path="conf", config_name="export")
def _hydra_main(cfg: DictConfig) -> None:
    with user_errors():
        for path in export(cfg):
            print(path)


def main() -> None:
    """Entry point: check overrides first, then run Hydra."""
    launch("export", _hydra_main)


if __name__ == "__main__":
    main()
