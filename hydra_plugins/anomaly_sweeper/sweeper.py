"""Hydra's Optuna sweeper, resumable: a re-run into the same sweep folder continues the SQLite study.

``hydra-optuna-sweeper`` already loads an existing study (``load_if_exists``) and adds ``n_trials``
trials to it, but numbers each invocation's jobs from 0, so the new trials' folders
(``<n>_<model>_<data>``) would overwrite the first ones. This subclass numbers the jobs on from
the trials the study already holds (job number = Optuna trial number).
"""

from __future__ import annotations

from typing import Any

from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper


class ResumableOptunaSweeper(OptunaSweeper):
    """``OptunaSweeper`` whose job numbers continue after the trials already in its storage."""

    def sweep(self, arguments: list[str]) -> Any:
        self.sweeper.job_idx = trials_in(self.sweeper.storage, self.sweeper.study_name)
        return super().sweep(arguments)


def trials_in(storage: Any, study_name: str | None) -> int:
    """How many trials the study ``study_name`` holds in ``storage`` (0 without storage or study)."""
    if not storage or not study_name:
        return 0
    import optuna

    try:
        return len(optuna.load_study(study_name=study_name, storage=storage).trials)
    except KeyError:  # no such study yet
        return 0
