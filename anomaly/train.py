"""Train, select and test a method: ``python -m anomaly.train model=padim data=mvtec data.category=bottle``.

In the ``separate`` setting one model is trained per category, one after another; in ``unified`` one
model covers all categories. Checkpoints are ranked on the validation split (``best.ckpt``) and the
test uses the selected one. The run folder gets checkpoints, ``metrics.json``, heatmaps and the
logger's files. The work is done by ``anomaly.engine.fit``.
"""

from __future__ import annotations

import sys
from typing import Any

import hydra
from omegaconf import DictConfig

from anomaly.config.precheck import launch
from anomaly.engine import fit
from anomaly.engine.run_folder import lock_run_folder, resume_command
from anomaly.utils.errors import user_errors


def train(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """Fit, validate and test; returns ``(metrics, objects)`` (see ``anomaly.engine.fit``)."""
    return fit(cfg)


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def _hydra_main(cfg: DictConfig) -> float | None:
    with user_errors():
        metrics, _ = train(cfg)
    value = metrics.get(cfg.get("optimized_metric"))
    return float(value) if value is not None else None


def _locked_main() -> None:
    with user_errors():
        lock_run_folder(sys.argv[1:])
    _hydra_main()


def main() -> None:
    """Entry point: settle the run folder (``ckpt_path=last`` / ``<run folder>``), check overrides, lock
    the run folder, then run Hydra."""
    with user_errors():
        sys.argv[1:] = resume_command(sys.argv[1:])
    launch("train", _locked_main)


if __name__ == "__main__":
    main()
