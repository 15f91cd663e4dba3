"""anomaly: a Hydra + PyTorch Lightning framework for industrial visual anomaly detection."""

__version__ = "0.1.0"
