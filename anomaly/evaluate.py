"""Re-test trained models: ``python -m anomaly.evaluate ckpt_path=<run folder or .ckpt>``.

``ckpt_path`` is a checkpoint file or a run folder (per category in the ``separate`` setting, the
checkpoint its test used: ``best.ckpt`` where validation ranked one, else ``last.ckpt``). Each model
loads with ``Method.load_from_checkpoint`` (safe unpickling, no pretrained file needed) and is tested
on its run's data; ``data.*`` and ``evaluator.*`` on the command line apply on top, e.g.
``data.root=/elsewhere`` or ``evaluator=binned``. The work is done by ``anomaly.engine.retest``.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from anomaly.config.precheck import launch
from anomaly.engine import retest
from anomaly.utils.errors import user_errors


def evaluate(cfg: DictConfig) -> dict[str, dict[str, float | None]]:
    """Test every checkpoint under ``cfg.ckpt_path``; returns per-category metrics and the mean."""
    return retest(cfg)


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def _hydra_main(cfg: DictConfig) -> None:
    with user_errors():
        evaluate(cfg)


def main() -> None:
    """Entry point: check overrides first, then run Hydra."""
    launch("eval", _hydra_main)


if __name__ == "__main__":
    main()
