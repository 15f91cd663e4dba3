"""Errors a user can cause end the program with one line, not a traceback."""

from __future__ import annotations

import errno
import importlib
import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# torch.utils.data re-raises an exception of a DataLoader worker (or of the pin-memory thread) in the
# main process as "Caught <Name> in DataLoader worker process <N>.\nOriginal Traceback ...", the
# worker's whole formatted traceback as the message (torch._utils.ExceptionWrapper.reraise).
_WRAPPED = re.compile(r"Caught (?P<name>\w+) in [^\n]*\.\nOriginal Traceback \(most recent call last\):\n")
# The traceback's last exception line: "<module>.<QualName>: <message>" (builtins have no module).
_LAST_LINE = re.compile(r"^(?P<path>[A-Za-z_][\w.]*): ", re.M)


def is_user_error(error: BaseException) -> bool:
    """Our own ``ValueError`` subclasses (bad path, option, data, checkpoint) are the user's to fix."""
    return isinstance(error, ValueError) and type(error).__module__.startswith("anomaly.")


def unwrap_worker_error(error: BaseException) -> tuple[type[BaseException], str] | None:
    """The class and original message of an exception torch re-raised from a DataLoader worker.

    Returns ``None`` for an exception that is not such a re-raise. The class is the re-raised one's,
    or, when torch could not rebuild it and raised a ``RuntimeError`` instead, the class named on the
    traceback's last line (imported only from our own ``anomaly.`` modules).
    """
    text = str(error)
    wrapped = _WRAPPED.match(text)
    if wrapped is None:
        return None
    original: type[BaseException] = type(error)
    if type(error) is RuntimeError and wrapped["name"] != "RuntimeError":
        found = _anomaly_class(text, wrapped["name"])
        if found is None:
            return None
        original = found
    name = original.__qualname__
    if original.__module__ not in ("builtins", "__main__"):  # as the traceback module spells it
        name = f"{original.__module__}.{name}"
    # The raised exception is the last one of a chain, so its line is the last with its name.
    start = text.rfind(f"\n{name}: ")
    if start < 0:
        return None
    return original, text[start + len(name) + 3:].strip()


def _anomaly_class(text: str, name: str) -> type[BaseException] | None:
    lines = [m["path"] for m in _LAST_LINE.finditer(text) if m["path"].rsplit(".", 1)[-1] == name]
    if not lines or not lines[-1].startswith("anomaly."):
        return None
    module, _, qualname = lines[-1].rpartition(".")
    try:
        found = getattr(importlib.import_module(module), qualname)
    except (ImportError, AttributeError):
        return None
    return found if isinstance(found, type) and issubclass(found, BaseException) else None


#: Where to write instead, for any entry point (the run folder's root, or predict's and export's ``output``).
_ELSEWHERE = "paths.log_dir=<folder> for a run's folder, output=<path> for predict and export"
#: Write failures that are the machine's state, not a bug: a full disk or quota, a read-only or forbidden folder.
FULL, READ_ONLY, DENIED = {errno.ENOSPC, errno.EDQUOT}, {errno.EROFS}, {errno.EACCES, errno.EPERM}
#: A folder wanted where a file is (``mkdir`` of ``x`` or ``x/y`` when ``x`` is a file).
NOT_FOLDER = {errno.ENOTDIR, errno.EEXIST}


def storage_error(error: BaseException) -> OSError | None:
    """The full-disk, read-only or permission ``OSError`` behind ``error`` (itself, its cause or context).

    ``torch.save`` on a full disk raises a ``RuntimeError`` ("unexpected pos ...") whose context is the
    ``OSError`` the file's ``write`` raised, so the implicit context is followed too.
    """
    current: BaseException | None = error
    seen: set[int] = set()
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and (current.errno in FULL | READ_ONLY | DENIED
                                             or (current.errno in NOT_FOLDER and _file_in(current.filename))):
            return current
        current = current.__cause__ or current.__context__
    return None


def _file_in(filename: object) -> Path | None:
    """The first part of the path ``filename`` that is an existing file (where a folder was wanted)."""
    if not filename:
        return None
    path = Path(str(filename)).expanduser().absolute()
    for part in reversed([path, *path.parents]):
        if part.exists() and not part.is_dir():
            return part
    return None


def storage_message(error: OSError) -> str:
    """One sentence for a full disk, a read-only file system or a denied write, naming the folder."""
    path = Path(str(error.filename)) if error.filename else None
    if path is not None:
        path = path.expanduser().absolute()
    existing_file = path is not None and path.is_file()
    folder = path.parent if path is not None and (existing_file or not path.is_dir()) else path
    where = str(folder) if folder is not None else "the output folder"
    if error.errno in NOT_FOLDER:
        return f"{_file_in(error.filename)} is a file, not a folder; choose another folder ({_ELSEWHERE})."
    if error.errno in FULL:
        return f"no space left on {where} (writing {path.name if path else 'a file'}); free some space there or " \
               f"write elsewhere ({_ELSEWHERE})."
    if error.errno in READ_ONLY:
        return f"{where} is on a read-only file system; write elsewhere ({_ELSEWHERE})."
    if existing_file:
        return f"{path} cannot be opened (permission denied); fix its permissions or use another file."
    return f"{where} is not writable (permission denied); choose another folder ({_ELSEWHERE})."


def user_message(error: BaseException) -> str | None:
    """The one sentence to show for a user error (also when raised in a DataLoader worker), else ``None``.

    ``hydra.utils.instantiate`` wraps what a constructor raised; the cause is what the user must fix,
    so the ``__cause__`` chain is followed down to the first user error. A full disk, a read-only
    folder or a denied write anywhere in the chain is one sentence naming the folder (``storage_message``).
    """
    current: BaseException | None = error
    while current is not None:
        worker = unwrap_worker_error(current)
        if worker is not None:
            cls, message = worker
            if issubclass(cls, ValueError) and cls.__module__.startswith("anomaly."):
                return message
        elif is_user_error(current):
            return str(current)
        current = current.__cause__
    storage = storage_error(error)
    return storage_message(storage) if storage is not None else None


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn user errors into ``Error: <sentence>`` and exit code 1 (``ANOMALY_TRACEBACK=1`` re-raises)."""
    try:
        yield
    except Exception as raised:
        message = user_message(raised)
        if message is None or os.environ.get("ANOMALY_TRACEBACK") == "1":
            raise
        print(f"Error: {message}", file=sys.stderr)
        sys.exit(1)
