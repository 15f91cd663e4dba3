"""The engine every entry point uses: builds the run's objects, runs units, checks checkpoints, aggregates.

``fit(cfg)`` trains, selects on validation and tests (``anomaly.train``); ``retest(cfg)`` re-tests
checkpoints (``anomaly.evaluate``). Entry points stay thin Hydra mains around them.
"""

from anomaly.engine.checkpoints import CheckpointError, find_checkpoints, load_method, read_checkpoint
from anomaly.engine.run import fit, retest

__all__ = ["CheckpointError", "find_checkpoints", "fit", "load_method", "read_checkpoint", "retest"]
