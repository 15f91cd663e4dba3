"""Fill an SDAS bank from a trained DDPM (RealNet's strength-controllable synthesis).

    python -m anomaly.synthesize synthesis=sdas ckpt_path=outputs/.../last.ckpt n_per_class=256
    python -m anomaly.synthesize ... sampler.method=ddim sampler.s=[0.01,0.03] bank_dir=banks/sdas_ddim

Samples ``n_per_class`` images of every category into ``bank_dir`` (default ``synthesis.bank``, the
folder that ``synthesis=sdas`` reads at training time); a killed run resumes where it stopped. The
work is done by ``anomaly.synthesis.fill.fill_bank``.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from anomaly.config.precheck import launch
from anomaly.engine.console import quiet_lightning
from anomaly.synthesis.bank import Bank
from anomaly.synthesis.fill import entry_seed, fill_bank
from anomaly.utils.errors import user_errors

__all__ = ["entry_seed", "synthesize"]


def synthesize(cfg: DictConfig) -> Bank:
    """Sample the missing bank entries described by ``cfg`` (see ``anomaly/conf/synthesize.yaml``)."""
    quiet_lightning()
    return fill_bank(cfg)


@hydra.main(version_base="1.3", config_path="conf", config_name="synthesize")
def _hydra_main(cfg: DictConfig) -> None:
    with user_errors():
        synthesize(cfg)


def main() -> None:
    """Entry point: check overrides first, then run Hydra."""
    launch("synthesize", _hydra_main)


if __name__ == "__main__":
    main()
