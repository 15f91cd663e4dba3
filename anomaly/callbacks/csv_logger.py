"""Lightning's ``CSVLogger`` that keeps the rows already in ``metrics.csv``: a resumed run (or any later
session in the same run folder) appends, where Lightning deletes "previous log files"."""

from __future__ import annotations

import csv

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter


class AppendingWriter(ExperimentWriter):
    """Lightning's experiment writer that starts from the columns of an existing ``metrics.csv`` and adds
    to it (a new column rewrites the file with the wider header, old rows kept)."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as file:
                self.metrics_keys = sorted(next(csv.reader(file), []))


class AppendingCSVLogger(CSVLogger):
    """``CSVLogger`` (same arguments) whose ``metrics.csv`` grows over the sessions of a run."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = AppendingWriter(log_dir=self.log_dir)
        return self._experiment
