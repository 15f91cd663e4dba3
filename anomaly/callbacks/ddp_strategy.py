"""DDP for every method, including statistics-only ones (PaDiM) that have nothing to train, with one
run folder per job under Hydra (single runs and sweep jobs alike)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.strategies.ddp import _sync_module_states
from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher

# Command-line flags that take the next argument and must reach the child processes unchanged.
_FLAGS_WITH_VALUE = ("--config-dir", "-cd", "--config-name", "-cn", "--config-path", "-cp")
_LAUNCH_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")
_started: list[tuple[list[subprocess.Popen], dict[str, str | None]]] = []  # children of this process, env before


class AnomalyDDPStrategy(DDPStrategy):
    """``DDPStrategy`` that leaves a module with no trainable parameter unwrapped, and starts its
    processes into the job's own run folder.

    PyTorch's ``DistributedDataParallel`` refuses such a module; methods that fit statistics
    reduce their own sums across processes instead (``PositionalGaussian.finalize(reduce=True)``).
    Modules with trainable parameters are wrapped exactly as by ``DDPStrategy``.

    Lightning starts ranks 1.. by re-running the command line with ``hydra.run.dir=<hydra.run.dir>``:
    inside a sweep job that is a fresh run folder (a duplicate) and ``-m`` would start the whole sweep
    again in every rank. :class:`JobScriptLauncher` gives them this job's overrides and folder instead.
    Under SLURM the processes exist already (Lightning's ``SLURMEnvironment``) and nothing is started.
    """

    def configure_ddp(self) -> None:
        if any(p.requires_grad for p in self.model.parameters()):
            super().configure_ddp()
        else:
            _sync_module_states(self.model)

    def _configure_launcher(self) -> None:
        super()._configure_launcher()
        if isinstance(self._launcher, _SubprocessScriptLauncher):
            self._launcher = JobScriptLauncher(self.cluster_environment, self.num_processes, self.num_nodes)


class JobScriptLauncher(_SubprocessScriptLauncher):
    """Lightning's script launcher whose children re-run this Hydra job (:func:`job_command`), not the
    command line; without Hydra it is Lightning's own."""

    def _call_children_scripts(self) -> None:
        from hydra.core.hydra_config import HydraConfig
        from hydra.utils import get_original_cwd

        if not HydraConfig.initialized():
            return super()._call_children_scripts()
        self._check_can_spawn_children()
        self.procs = []
        _started.append((self.procs, {k: os.environ.get(k) for k in _LAUNCH_ENV}))
        env = self.cluster_environment
        os.environ.update(MASTER_ADDR=env.main_address, MASTER_PORT=str(env.main_port), NODE_RANK=str(env.node_rank()),
                          LOCAL_RANK=str(env.local_rank()), WORLD_SIZE=str(self.num_processes * self.num_nodes))
        for local_rank in range(1, self.num_processes):
            child = {**os.environ, "LOCAL_RANK": str(local_rank)}
            if os.environ.get("PL_GLOBAL_SEED") is None:
                child.pop("PL_GLOBAL_SEED", None)
            command = job_command(HydraConfig.get(), sys.argv, local_rank)
            self.procs.append(subprocess.Popen(command, env=child, cwd=get_original_cwd()))


def job_command(hydra: Any, argv: Sequence[str], local_rank: int) -> list[str]:
    """The command of rank ``local_rank`` for this Hydra job: the entry module, the flags of ``argv``
    (config dir/name), the job's overrides (its sweep values included), its run folder, ``RUN`` mode."""
    import __main__

    spec = getattr(__main__, "__spec__", None)
    command = [sys.executable, "-m", spec.name] if spec is not None else [sys.executable, argv[0]]
    args = list(argv[1:])
    for i, arg in enumerate(args):
        if arg in _FLAGS_WITH_VALUE and i + 1 < len(args):
            command += [arg, args[i + 1]]
        elif arg.startswith(tuple(f"{flag}=" for flag in _FLAGS_WITH_VALUE)):
            command.append(arg)
    searchpath = [o for o in hydra.overrides.hydra if o.lstrip("+").startswith("hydra.searchpath=")]
    command += [*hydra.overrides.task, *searchpath, f'hydra.run.dir="{hydra.runtime.output_dir}"',
                f"hydra.job.name=train_ddp_process_{local_rank}", "hydra.output_subdir=null", "hydra.mode=RUN"]
    return command


def end_job_processes() -> None:
    """After a job whose ranks this process started: wait for them, close the process group and restore
    the environment, so the next job of a sweep in this process starts its own ranks (Lightning reuses
    ranks it finds in the environment and would talk to the finished job's)."""
    import torch.distributed as dist

    while _started:
        procs, before = _started.pop()
        for proc in procs:
            proc.wait()
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
