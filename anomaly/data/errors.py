"""The one exception type for bad data-set input (paths, layouts, files, options)."""

from __future__ import annotations


class DataError(ValueError):
    """Bad data-set input; the message is one sentence naming the path or option and the fix."""
