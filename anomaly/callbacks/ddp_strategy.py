"""DDP for every method, including statistics-only ones (PaDiM) that have nothing to train."""

from __future__ import annotations

from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.strategies.ddp import _sync_module_states


class AnomalyDDPStrategy(DDPStrategy):
    """``DDPStrategy`` that leaves a module with no trainable parameter unwrapped.

    PyTorch's ``DistributedDataParallel`` refuses such a module; methods that fit statistics
    reduce their own sums across processes instead (``PositionalGaussian.finalize(reduce=True)``).
    Modules with trainable parameters are wrapped exactly as by ``DDPStrategy``.
    """

    def configure_ddp(self) -> None:
        if any(p.requires_grad for p in self.model.parameters()):
            super().configure_ddp()
        else:
            _sync_module_states(self.model)
