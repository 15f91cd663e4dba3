"""A picture of what a synthesis strategy makes, written into the run folder.

    python -m anomaly.gallery synthesis=cutpaste images=data/synthetic/capsule/train/good
    python -m anomaly.gallery synthesis=sdas synthesis.bank=banks/sdas images=... image_size=64

The work is done by ``anomaly.synthesis.gallery.write_gallery``.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from anomaly.config.precheck import launch
from anomaly.synthesis.gallery import write_gallery
from anomaly.utils.errors import user_errors


@hydra.main(version_base="1.3", config_path="conf", config_name="gallery")
def _hydra_main(cfg: DictConfig) -> None:
    with user_errors():
        print(write_gallery(cfg))


def main() -> None:
    """Entry point: check overrides first, then run Hydra."""
    launch("gallery", _hydra_main)


if __name__ == "__main__":
    main()
