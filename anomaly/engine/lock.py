"""One training per run folder: an exclusive ``flock`` on ``<run>/.lock``, held while the run lives.

The kernel drops the lock when the holding process ends (however it ends), so a killed run never leaves
a stale lock. The file holds ``<pid> <host>`` of the holder, which the refused run names.
"""

from __future__ import annotations

import fcntl
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOCK = ".lock"
_held: dict[Path, int] = {}  # run folder -> open descriptor holding its lock, in this process


class RunLockedError(ValueError):
    """Another process is training into the run folder."""


def is_held(folder: str | Path) -> bool:
    """Whether this process holds the lock of ``folder``."""
    return Path(folder).resolve() in _held


def acquire(folder: str | Path) -> bool:
    """Lock ``folder`` for this process (created if missing); ``False`` when this process held it already.

    Raises:
        RunLockedError: another process holds it (nothing is written then).
    """
    folder = Path(folder).resolve()
    if folder in _held or _rank() != 0:  # DDP: rank zero holds it for the job
        return False
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 200, 0).decode(errors="replace").split()
        os.close(fd)
        who = f"process {holder[0]} on {holder[1]}" if len(holder) >= 2 else "another process"
        raise RunLockedError(f"{folder} is in use by another training ({who}); wait for it to end, or train "
                             "into another folder (leave out hydra.run.dir for a new one).") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
    _held[folder] = fd
    return True


def release(folder: str | Path) -> None:
    """Drop this process's lock of ``folder`` (the file stays: removing it would race a waiting run)."""
    fd = _held.pop(Path(folder).resolve(), None)
    if fd is not None:
        os.close(fd)


def _rank() -> int:
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    return int(getattr(rank_zero_only, "rank", 0))


@contextmanager
def holding(folder: str | Path) -> Iterator[None]:
    """Hold the lock of ``folder`` for the block; one taken earlier by this process stays held after it."""
    acquired = acquire(folder)
    try:
        yield
    finally:
        if acquired:
            release(folder)
