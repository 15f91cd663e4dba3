"""A callback for bench/startup.py: prints the wall time of the first training batch, then ends the process."""

import os
import time

import lightning as L


class FirstBatch(L.Callback):
    """Print ``FIRST_BATCH <unix time>`` at the first training batch and exit at once."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: ANN001
        print(f"FIRST_BATCH {time.time():.6f}", flush=True)
        os._exit(0)
