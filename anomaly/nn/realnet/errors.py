"""The error of RealNet options the blocks cannot honour."""

from __future__ import annotations


class RealNetConfigError(ValueError):
    """A RealNet option (kept channels, selection, RRS sizes, image size, synthesis) that cannot be used."""
