"""Per-position multivariate Gaussians from running sums (PaDiM's statistics)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class DegenerateStatisticsError(RuntimeError):
    """Too few samples, or a covariance that is not positive definite."""


class PositionalGaussian(nn.Module):
    """Mean and inverse covariance of a d-dim embedding at each of P positions.

    Training accumulates Σx and Σxxᵀ per position in float64 (memory is P·d² whatever the number of
    images); ``finalize`` turns them into μ and (Σ + ε·I)⁻¹ via Cholesky. Only μ and Σ⁻¹ are saved
    in checkpoints. Under DDP, ``finalize(reduce=...)`` sums the accumulators across processes.

    Args:
        positions: number of grid positions P.
        dim: embedding size d.
        epsilon: ridge added to each covariance (PaDiM: 0.01).

    Example:
        >>> g = PositionalGaussian(positions=4, dim=3)
        >>> g.accumulate(torch.randn(10, 4, 3)); g.finalize()
        >>> g.mahalanobis(torch.randn(2, 4, 3)).shape
        torch.Size([2, 4])
    """

    def __init__(self, positions: int, dim: int, epsilon: float = 0.01) -> None:
        super().__init__()
        self.epsilon = epsilon
        self.register_buffer("mean", torch.zeros(positions, dim))
        self.register_buffer("precision", torch.zeros(positions, dim, dim))
        self.register_buffer("fitted", torch.tensor(False))
        self.positions, self.dim = positions, dim
        # Accumulators exist only while fitting (allocated by the first batch, freed by finalize).
        self.register_buffer("count", torch.zeros((), dtype=torch.float64), persistent=False)
        for name in ("shift", "sum", "sum_outer"):
            self.register_buffer(name, torch.empty(0, dtype=torch.float64), persistent=False)

    def reset(self) -> None:
        """Forget accumulated sums (start of a fit)."""
        self.count.zero_()
        for name in ("shift", "sum", "sum_outer"):
            setattr(self, name, torch.empty(0, dtype=torch.float64, device=self.count.device))

    @torch.no_grad()
    def accumulate(self, embedding: Tensor) -> None:
        """Add a batch of embeddings, shape N×P×d."""
        x = embedding.to(torch.float64)
        if self.sum_outer.numel() == 0:
            p, d, device = self.positions, self.dim, x.device
            # Sums of (x - shift) with shift ≈ the mean avoid cancellation in Σxxᵀ/N − μμᵀ.
            self.shift = x.mean(0)
            self.sum = torch.zeros(p, d, dtype=torch.float64, device=device)
            self.sum_outer = torch.zeros(p, d, d, dtype=torch.float64, device=device)
        x = x - self.shift
        self.count += x.shape[0]
        self.sum += x.sum(0)
        xp = x.transpose(0, 1)  # P×N×d
        self.sum_outer.baddbmm_(xp.transpose(1, 2), xp)

    @torch.no_grad()
    def finalize(self, reduce: bool = False, chunk: int = 512) -> None:
        """Compute μ and Σ⁻¹ from the sums; ``reduce`` combines them over DDP processes first.

        Processes are combined with the pairwise (Chan et al.) update, so each may keep its own shift.
        The sums are consumed (turned into the scatter matrix in place) and freed afterwards.
        """
        n_local = float(self.count)
        if self.sum_outer.numel() == 0:  # this process saw no data
            self.shift = torch.zeros(self.positions, self.dim, dtype=torch.float64, device=self.count.device)
            self.sum = torch.zeros_like(self.shift)
            self.sum_outer = torch.zeros(self.positions, self.dim, self.dim, dtype=torch.float64,
                                         device=self.count.device)
        centred = self.sum / max(n_local, 1.0)
        mean = centred + self.shift if n_local > 0 else torch.zeros_like(self.shift)
        scatter = self.sum_outer.baddbmm_(centred.unsqueeze(2), centred.unsqueeze(1), alpha=-n_local)
        n = torch.tensor(n_local, dtype=torch.float64, device=mean.device)
        if reduce and torch.distributed.is_available() and torch.distributed.is_initialized():
            weighted = mean * n
            torch.distributed.all_reduce(n)
            torch.distributed.all_reduce(weighted)
            total_mean = weighted / n.clamp_min(1)
            delta = mean - total_mean
            scatter.baddbmm_(delta.unsqueeze(2), delta.unsqueeze(1), alpha=n_local)
            torch.distributed.all_reduce(scatter)
            mean = total_mean
        if float(n) < 2:
            raise DegenerateStatisticsError(
                f"PaDiM needs at least 2 training images to estimate a covariance, got {int(n)}; "
                "add normal training images."
            )
        self.mean.copy_(mean.to(self.mean.dtype))
        eye = self.epsilon * torch.eye(scatter.shape[-1], dtype=scatter.dtype, device=scatter.device)
        # Batched LAPACK on many small matrices is far faster single-threaded (no OpenMP overhead per
        # matrix); chunks bound the float64 temporaries.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            for start in range(0, scatter.shape[0], chunk):
                cov = scatter[start : start + chunk] / (float(n) - 1) + eye
                chol, info = torch.linalg.cholesky_ex(cov)
                if bool((info != 0).any()):
                    raise DegenerateStatisticsError(
                        "A PaDiM covariance is not positive definite; raise model.epsilon or check the features."
                    )
                self.precision[start : start + chunk] = torch.cholesky_inverse(chol).to(self.precision.dtype)
        finally:
            torch.set_num_threads(threads)
        self.fitted.fill_(True)
        self.reset()

    def mahalanobis(self, embedding: Tensor, chunk: int = 1024) -> Tensor:
        """Distances √((x−μ)ᵀ Σ⁻¹ (x−μ)) of N×P×d embeddings → N×P, in chunks of positions."""
        if not bool(self.fitted):
            raise DegenerateStatisticsError("The Gaussian statistics are not fitted; train the model first.")
        out = embedding.new_empty(embedding.shape[:2])
        for start in range(0, embedding.shape[1], chunk):
            stop = start + chunk
            # Contiguous p×N×d: bmm on a strided batch takes a slow path (100× slower with 2 threads).
            delta = (embedding[:, start:stop].transpose(0, 1) - self.mean[start:stop, None]).contiguous()
            projected = torch.bmm(delta, self.precision[start:stop])
            out[:, start:stop] = (projected * delta).sum(-1).clamp_min(0).sqrt().transpose(0, 1)
        return out
