"""Sinusoidal 2-D position codes of grid cells: the condition of CFlow-style position-aware flows."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from anomaly.nn.flows.coupling import FlowInputError


def position_encoding(cells: int, dim: int) -> Tensor:
    """``cells²×dim`` codes of a ``cells×cells`` grid in row-major order (CFlow's ``positionalencoding2d``):
    the first half of the channels encode the column, the second half the row, as interleaved
    sin/cos of the integer index at frequencies 10000^(−2k/(dim/2))."""
    if int(dim) <= 0 or int(dim) % 4:
        raise FlowInputError(f"model.position_dim={dim} must be a positive multiple of 4 (sin and cos of row and "
                             "column), or 0 for no position condition.")
    half = int(dim) // 2
    frequency = torch.exp(torch.arange(0, half, 2, dtype=torch.float64) * -(math.log(10000.0) / half))
    index = torch.arange(int(cells), dtype=torch.float64)[:, None] * frequency  # cells × half/2
    code = torch.stack([index.sin(), index.cos()], dim=-1).flatten(1)  # cells × half, sin/cos interleaved
    column = code[None, :, :].expand(cells, cells, half)
    row = code[:, None, :].expand(cells, cells, half)
    return torch.cat([column, row], dim=-1).reshape(cells * cells, int(dim)).float()
