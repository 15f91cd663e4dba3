"""Errors a user can cause end the program with one line, not a traceback."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager


def is_user_error(error: BaseException) -> bool:
    """Our own ``ValueError`` subclasses (bad path, option, data, checkpoint) are the user's to fix."""
    return isinstance(error, ValueError) and type(error).__module__.startswith("anomaly.")


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn user errors into ``Error: <sentence>`` and exit code 1 (``ANOMALY_TRACEBACK=1`` re-raises)."""
    try:
        yield
    except Exception as raised:
        error: BaseException = raised
        # hydra.utils.instantiate wraps what a constructor raised; the cause is what the user must fix.
        while not is_user_error(error) and error.__cause__ is not None:
            error = error.__cause__
        if not is_user_error(error) or os.environ.get("ANOMALY_TRACEBACK") == "1":
            raise
        print(f"Error: {error}", file=sys.stderr)
        sys.exit(1)
