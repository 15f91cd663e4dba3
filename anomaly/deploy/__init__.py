"""Deploying a trained model: predict on new images, thresholds outside the graph, export, runtimes.

Example:
    >>> from anomaly.deploy import load                       # doctest: +SKIP
    >>> detector = load("outputs/runs/<date>/<run>")            # doctest: +SKIP
    >>> result = detector("part.png")                           # doctest: +SKIP
    >>> result.anomaly_map.shape, result.score, result.decision # doctest: +SKIP
"""

from anomaly.deploy.detector import Detector, Result, load
from anomaly.deploy.thresholds import Thresholds

__all__ = ["Detector", "Result", "Thresholds", "load"]
