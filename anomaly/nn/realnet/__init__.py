"""RealNet blocks (no Lightning): AFS channel selection, reconstruction UNet, RRS head, the pure model."""

from anomaly.nn.realnet.afs import FeatureSelection, channel_scores
from anomaly.nn.realnet.errors import RealNetConfigError
from anomaly.nn.realnet.model import RealNetModel, Reconstruction
from anomaly.nn.realnet.rrs import ResidualSelection, top_channels
from anomaly.nn.realnet.unet import ReconstructionUNet

__all__ = ["FeatureSelection", "RealNetConfigError", "RealNetModel", "Reconstruction", "ReconstructionUNet",
           "ResidualSelection", "channel_scores", "top_channels"]
