"""Normalizing-flow blocks in plain torch: soft-clamped affine couplings, HINT-style dense
(recursive) couplings, fixed permutations and the stack of blocks. No Lightning here."""

from anomaly.nn.flows.coupling import (
    AffineCoupling,
    ClampError,
    DenseCoupling,
    Flow,
    FlowInputError,
    Permutation,
    Subnet,
    soft_clamp,
)
from anomaly.nn.flows.detector import FlowDensityModel

__all__ = [
    "FlowDensityModel",
    "AffineCoupling",
    "ClampError",
    "DenseCoupling",
    "Flow",
    "FlowInputError",
    "Permutation",
    "Subnet",
    "soft_clamp",
]
