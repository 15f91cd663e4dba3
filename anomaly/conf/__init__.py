"""The project's Hydra configs, shipped inside the package (found as ``pkg://anomaly.conf``)."""

from pathlib import Path

CONF_DIR = Path(__file__).resolve().parent
