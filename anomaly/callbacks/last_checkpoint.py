"""``last.ckpt`` as the newest state of a run, which ``ckpt_path=last`` resumes from."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint


class LastCheckpoint(ModelCheckpoint):
    """``last.ckpt``: Lightning's ``ModelCheckpoint`` without a monitor (saved on its schedule, replaced each
    time), plus one save when training ends on a state the schedule did not save.

    Lightning's own ``save_last`` writes ``last.ckpt`` only beside a ranked checkpoint, so with validation it
    holds the best epoch, not the last. The end-of-training save covers ``max_time`` and ``max_steps`` cuts,
    epochs after the last validation, and runs without an optimizer step (PaDiM fits in its epoch hooks).
    """

    def __init__(self, dirpath: str | Path, every_n_epochs: int | None = None,
                 every_n_train_steps: int | None = None) -> None:
        super().__init__(dirpath=dirpath, filename="last", monitor=None, save_top_k=1, save_last=False,
                         enable_version_counter=False, every_n_epochs=every_n_epochs,
                         every_n_train_steps=every_n_train_steps)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.fast_dev_run or (self._last_checkpoint_saved and self._last_global_step_saved == trainer.global_step):
            return
        self._save_topk_checkpoint(trainer, self._monitor_candidates(trainer))
