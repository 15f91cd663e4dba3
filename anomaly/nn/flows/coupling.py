"""Invertible blocks with exact log-determinants and exact inverses.

Every block maps ``x`` (B×D) to ``(y, log|det ∂y/∂x|)`` with the log-determinant per sample (B),
and ``inverse(y)`` returns ``x``. Blocks built with ``cond_dim`` > 0 take a condition ``cond``
(B×cond_dim, e.g. the position of a cell) that every subnet sees beside its half of the features
(CFlow-style conditional couplings, Gudovskiy et al., WACV 2022); the Jacobian is with respect to ``x``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn


class ClampError(ValueError):
    """A soft-clamp strength α that is not positive."""


class FlowInputError(ValueError):
    """Features of another size than the flow was built for."""


def check_clamp(alpha: float) -> float:
    if not float(alpha) > 0:
        raise ClampError(f"model.clamp={alpha} must be a positive number (the soft clamp's α, e.g. 2 or 3).")
    return float(alpha)


def soft_clamp(s: Tensor, alpha: float) -> Tensor:
    """(2α/π)·atan(s/α): slope 2/π at 0, bounded by ±α (DifferNet's clamp; FrEIA's ATAN omits /α)."""
    return (2.0 * alpha / math.pi) * torch.atan(s / alpha)


class Subnet(nn.Sequential):
    """Fully connected network ``size_in → hidden… → size_out`` with ReLUs (DifferNet's subnets)."""

    def __init__(self, size_in: int, size_out: int, hidden: Sequence[int], dropout: float = 0.0) -> None:
        layers: list[nn.Module] = []
        width = size_in
        for h in hidden:
            layers += [nn.Linear(width, int(h)), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = int(h)
        layers.append(nn.Linear(width, size_out))
        super().__init__(*layers)


class Permutation(nn.Module):
    """A fixed random permutation of the D features (seeded, stored as buffers); log|det| = 0."""

    def __init__(self, dim: int, seed: int) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(int(seed))
        perm = torch.randperm(dim, generator=generator)
        self.register_buffer("perm", perm)
        self.register_buffer("inverse_perm", torch.argsort(perm))

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return x[:, self.perm], x.new_zeros(x.shape[0])

    def inverse(self, y: Tensor, cond: Tensor | None = None) -> Tensor:
        return y[:, self.inverse_perm]


def with_condition(x: Tensor, cond: Tensor | None) -> Tensor:
    """A subnet's input: the features, and the condition beside them when there is one."""
    return x if cond is None else torch.cat([x, cond], dim=1)


class AffineCoupling(nn.Module):
    """DifferNet's two-sided affine coupling (GLOW-style) with the soft clamp.

    ``x = [x1, x2]``; ``y1 = x1·exp(s2(x2)) + t2(x2)``; ``y2 = x2·exp(s1(y1)) + t1(y1)``;
    log|det| = Σ s2 + Σ s1 (clamped s).
    """

    def __init__(
        self, dim: int, hidden: Sequence[int], clamp: float, dropout: float = 0.0, cond_dim: int = 0
    ) -> None:
        super().__init__()
        if dim < 2:
            raise FlowInputError(f"A coupling needs at least 2 features, got {dim}.")
        self.dim, self.clamp = dim, check_clamp(clamp)
        self.d1 = dim // 2
        self.d2 = dim - self.d1
        self.net2 = Subnet(self.d2 + cond_dim, 2 * self.d1, hidden, dropout)  # conditions x1 on x2
        self.net1 = Subnet(self.d1 + cond_dim, 2 * self.d2, hidden, dropout)  # conditions x2 on y1

    def _st(self, net: nn.Module, given: Tensor, cond: Tensor | None) -> tuple[Tensor, Tensor]:
        s, t = net(with_condition(given, cond)).chunk(2, dim=1)
        return soft_clamp(s, self.clamp), t

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x1, x2 = x[:, : self.d1], x[:, self.d1 :]
        s2, t2 = self._st(self.net2, x2, cond)
        y1 = x1 * torch.exp(s2) + t2
        s1, t1 = self._st(self.net1, y1, cond)
        y2 = x2 * torch.exp(s1) + t1
        return torch.cat([y1, y2], dim=1), s2.sum(1) + s1.sum(1)

    def inverse(self, y: Tensor, cond: Tensor | None = None) -> Tensor:
        y1, y2 = y[:, : self.d1], y[:, self.d1 :]
        s1, t1 = self._st(self.net1, y1, cond)
        x2 = (y2 - t1) * torch.exp(-s1)
        s2, t2 = self._st(self.net2, x2, cond)
        x1 = (y1 - t2) * torch.exp(-s2)
        return torch.cat([x1, x2], dim=1)


class DenseCoupling(nn.Module):
    """HINT-style recursive coupling (Kruse et al., AAAI 2021) with a depth cap.

    ``x = [u, l]``: ``u' = H_u(u)`` and ``l' = H_l(l)`` by two sub-blocks of depth − 1 (identity at
    depth 1 or below 2 features), then the node's own coupling ``l'' = exp(s(u'))⊙l' + t(u')``; the
    output is ``[u', l'']``. The Jacobian is block lower triangular at every level, so the recursion
    fills the whole lower triangle; log|det| is the sum of every node's Σ s. The inverse undoes the
    node's coupling first, then the sub-blocks.
    """

    def __init__(
        self, dim: int, hidden: Sequence[int], clamp: float, depth: int = 2, dropout: float = 0.0, cond_dim: int = 0
    ) -> None:
        super().__init__()
        if dim < 2:
            raise FlowInputError(f"A coupling needs at least 2 features, got {dim}.")
        if int(depth) < 1:
            raise FlowInputError(f"model.depth={depth} must be at least 1 (1 = one plain one-sided coupling).")
        self.dim, self.clamp, self.depth = dim, check_clamp(clamp), int(depth)
        self.du = dim // 2
        self.dl = dim - self.du
        self.net = Subnet(self.du + cond_dim, 2 * self.dl, hidden, dropout)
        deeper = self.depth > 1

        def child(size: int) -> DenseCoupling | None:
            return DenseCoupling(size, hidden, clamp, depth - 1, dropout, cond_dim) if deeper and size >= 2 else None

        self.upper, self.lower = child(self.du), child(self.dl)

    def _st(self, given: Tensor, cond: Tensor | None) -> tuple[Tensor, Tensor]:
        s, t = self.net(with_condition(given, cond)).chunk(2, dim=1)
        return soft_clamp(s, self.clamp), t

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        u, low = x[:, : self.du], x[:, self.du :]
        logdet = x.new_zeros(x.shape[0])
        if self.upper is not None:
            u, ld = self.upper(u, cond)
            logdet = logdet + ld
        if self.lower is not None:
            low, ld = self.lower(low, cond)
            logdet = logdet + ld
        s, t = self._st(u, cond)
        return torch.cat([u, low * torch.exp(s) + t], dim=1), logdet + s.sum(1)

    def inverse(self, y: Tensor, cond: Tensor | None = None) -> Tensor:
        u, low = y[:, : self.du], y[:, self.du :]
        s, t = self._st(u, cond)
        low = (low - t) * torch.exp(-s)
        if self.upper is not None:
            u = self.upper.inverse(u, cond)
        if self.lower is not None:
            low = self.lower.inverse(low, cond)
        return torch.cat([u, low], dim=1)


class Flow(nn.Module):
    """A stack of ``n_blocks`` × [fixed permutation → coupling block] over D-dim feature vectors.

    Args:
        dim: feature size D the flow is built for.
        kind: ``plain`` (DifferNet's two-sided affine coupling) or ``dense`` (HINT-style recursive).
        n_blocks: number of coupling blocks.
        hidden: hidden widths of every subnet.
        clamp: soft clamp α > 0.
        depth: recursion depth cap of dense blocks (ignored for plain ones).
        seed: seed of the permutations (block i uses seed + i).
        cond_dim: size of the condition every subnet sees (0: none, the paper; CFlow: a position code).
    """

    KINDS = ("plain", "dense")

    def __init__(
        self,
        dim: int,
        kind: str = "plain",
        n_blocks: int = 8,
        hidden: Sequence[int] = (2048, 2048, 2048),
        clamp: float = 3.0,
        depth: int = 2,
        dropout: float = 0.0,
        seed: int = 0,
        cond_dim: int = 0,
    ) -> None:
        super().__init__()
        check_clamp(clamp)
        if kind not in self.KINDS:
            raise FlowInputError(f"model.kind={kind} is not a flow kind; choose one of {list(self.KINDS)}.")
        if int(cond_dim) < 0:
            raise FlowInputError(f"The condition size {cond_dim} must be 0 (none) or positive.")
        self.dim, self.kind, self.cond_dim = int(dim), kind, int(cond_dim)
        blocks: list[nn.Module] = []
        for i in range(int(n_blocks)):
            blocks.append(Permutation(self.dim, seed + i))
            if kind == "plain":
                blocks.append(AffineCoupling(self.dim, hidden, clamp, dropout, self.cond_dim))
            else:
                blocks.append(DenseCoupling(self.dim, hidden, clamp, depth, dropout, self.cond_dim))
        self.blocks = nn.ModuleList(blocks)

    def check(self, x: Tensor, cond: Tensor | None) -> None:
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise FlowInputError(
                f"The flow was built for {self.dim}-dim features but got shape {tuple(x.shape)}; the backbone "
                "layers and model.scales must be those the flow (or its checkpoint) was built with."
            )
        if self.cond_dim == 0 and cond is not None:
            raise FlowInputError("This flow was built without a condition (cond_dim=0) but was given one.")
        if self.cond_dim and (cond is None or tuple(cond.shape) != (x.shape[0], self.cond_dim)):
            got = None if cond is None else tuple(cond.shape)
            raise FlowInputError(f"The flow was built for a {self.cond_dim}-dim condition per sample, got {got}.")

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self.check(x, cond)
        logdet = x.new_zeros(x.shape[0])
        for block in self.blocks:
            x, ld = block(x, cond)
            logdet = logdet + ld
        return x, logdet

    def inverse(self, z: Tensor, cond: Tensor | None = None) -> Tensor:
        self.check(z, cond)
        for block in reversed(self.blocks):
            z = block.inverse(z, cond)
        return z

    def nll(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        """Negative log-likelihood per dimension under a standard normal base, per sample (without the
        constant ½·log 2π): (½‖z‖² − log|det J|) / D."""
        return per_dimension(*self(x, cond), "nll")


SCORES = ("nll", "neg_log_pz", "z2")


def check_score(score: str) -> str:
    if score not in SCORES:
        raise FlowInputError(f"model.score={score!r} is unknown; choose one of {list(SCORES)} (nll: ours, "
                             "neg_log_pz: the papers' −log p_Z(z), z2: DifferNet's train.py).")
    return score


def per_dimension(z: Tensor, logdet: Tensor, score: str = "nll") -> Tensor:
    """One number per sample from the flow's output, divided by D (constants dropped):

    - ``nll``: (½‖z‖² − log|det J|)/D, the training loss (−log p_X(x));
    - ``neg_log_pz``: ½‖z‖²/D, −log p_Z(z) of the latent alone (both papers' anomaly score);
    - ``z2``: ‖z‖²/D, the mean of z² (DifferNet's ``train.py``; ranks as ``neg_log_pz``).
    """
    squared = z.pow(2).sum(1)
    if check_score(score) == "nll":
        return (0.5 * squared - logdet) / z.shape[1]
    return (0.5 if score == "neg_log_pz" else 1.0) * squared / z.shape[1]
