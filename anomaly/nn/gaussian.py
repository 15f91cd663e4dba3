"""Per-position multivariate Gaussians from running sums (PaDiM's statistics)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from anomaly.data.errors import DataError

# Float64 temporaries of one chunk of positions hold at most this many elements per tensor (128 MB).
CHUNK_ELEMENTS = 1 << 24


class DegenerateStatisticsError(DataError):
    """Too few samples, a covariance that is not positive definite, or statistics never fitted."""


def float32_or_wider(dtype: torch.dtype) -> torch.dtype:
    """``dtype`` if it is float32 or float64, else float32 (the statistics never run in half precision)."""
    return torch.promote_types(dtype, torch.float32)


class PositionalGaussian(nn.Module):
    """Mean and inverse covariance of a d-dim embedding at each of P positions.

    Training accumulates, per position, Σ(x−s) in float64 and Σ(x−s)(x−s)ᵀ in float32, where the
    shift s is the first batch's per-position mean: the sums are then centred (no cancellation in
    Σxxᵀ/N − μμᵀ) and each batch's outer products are formed in float64, chunk by chunk of
    positions, before being added. Memory is one P·d² float32 block whatever the number of images;
    ``finalize`` turns it, chunk by chunk and in place, into Σ⁻¹ = (Σ + ε·I)⁻¹ via a float64
    Cholesky, so Σ⁻¹ takes no memory of its own. Σ⁻¹ is allocated only when fitted or loaded.
    Statistics and distances run in float32 or wider, with autocast off, whatever the caller's
    precision. Only μ, Σ⁻¹ and the fitted flag are saved in checkpoints. Under DDP,
    ``finalize(reduce=...)`` sums the accumulators across processes.

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
        self.positions, self.dim = positions, dim
        self.register_buffer("mean", torch.zeros(positions, dim))
        # P×d×d once fitted or loaded (3.8 GB for WR50-Rd550 at 224²): nothing is allocated up front.
        self.register_buffer("precision", torch.empty(0))
        self.register_buffer("fitted", torch.tensor(False))
        # Accumulators exist only while fitting (allocated by the first batch, consumed by finalize).
        self.register_buffer("count", torch.zeros((), dtype=torch.float64), persistent=False)
        for name in ("shift", "sum", "sum_outer"):
            self.register_buffer(name, torch.empty(0, dtype=torch.float64), persistent=False)

    @property
    def storage_dtype(self) -> torch.dtype:
        """Dtype of Σ⁻¹ and of the outer-product sums: the mean's, but at least float32."""
        return float32_or_wider(self.mean.dtype)

    def chunk_size(self, chunk: int | None = None) -> int:
        """Positions per chunk of float64 temporaries (``chunk`` caps it)."""
        size = max(1, CHUNK_ELEMENTS // (self.dim * self.dim))
        return max(1, min(size, chunk)) if chunk else size

    def reset(self) -> None:
        """Forget accumulated sums and any fitted Σ⁻¹ (start of a fit: frees its memory first)."""
        device = self.count.device
        self.count.zero_()
        for name in ("shift", "sum", "sum_outer"):
            setattr(self, name, torch.empty(0, dtype=torch.float64, device=device))
        self.precision = torch.empty(0, dtype=self.storage_dtype, device=device)
        self.fitted.fill_(False)

    def _release(self) -> None:
        device = self.count.device
        self.count.zero_()
        for name in ("shift", "sum", "sum_outer"):
            setattr(self, name, torch.empty(0, dtype=torch.float64, device=device))

    def _allocate(self, shift: Tensor) -> None:
        p, d, device = self.positions, self.dim, shift.device
        self.shift = shift
        self.sum = torch.zeros(p, d, dtype=torch.float64, device=device)
        self.sum_outer = torch.zeros(p, d, d, dtype=self.storage_dtype, device=device)

    @torch.no_grad()
    def accumulate(self, embedding: Tensor, chunk: int | None = None) -> None:
        """Add a batch of embeddings, shape N×P×d (any float dtype; summed in float64/float32)."""
        with torch.autocast(embedding.device.type, enabled=False):
            x = embedding.to(torch.float64)
            if self.sum_outer.numel() == 0:
                # Sums of (x - shift) with shift ≈ the mean avoid cancellation in Σxxᵀ/N − μμᵀ.
                self._allocate(x.mean(0))
            x = x - self.shift
            self.count += x.shape[0]
            self.sum += x.sum(0)
            step = self.chunk_size(chunk)
            for start in range(0, self.positions, step):
                xp = x[:, start : start + step].transpose(0, 1).contiguous()  # p×N×d
                self.sum_outer[start : start + step] += torch.bmm(xp.transpose(1, 2), xp).to(self.sum_outer.dtype)

    @torch.no_grad()
    def start(self, shift: Tensor) -> None:
        """Start accumulating about ``shift`` (P×d; another Gaussian's, so that :meth:`complement` can subtract)."""
        self.reset()
        self._allocate(shift.to(torch.float64).clone())

    @torch.no_grad()
    def complement(self, total: PositionalGaussian) -> None:
        """Turn these sums (of a subset of ``total``'s samples, begun with ``start(total.shift)``) into those of
        ``total``'s other samples, in place: a leave-subset-out fit costs no pass over the others."""
        if self.sum_outer.numel() == 0 or total.sum_outer.numel() == 0 or not torch.equal(self.shift, total.shift):
            raise ValueError("complement needs sums begun with start(total.shift) and a total with sums")
        torch.sub(total.sum, self.sum, out=self.sum)
        torch.sub(total.sum_outer, self.sum_outer, out=self.sum_outer)
        torch.sub(total.count, self.count, out=self.count)

    @torch.no_grad()
    def finalize(self, reduce: bool = False, chunk: int | None = None) -> None:
        """Compute μ and Σ⁻¹ from the sums; ``reduce`` combines them over DDP processes first.

        Processes are combined with the pairwise (Chan et al.) update, so each may keep its own shift.
        The outer-product sums are turned into Σ⁻¹ in place, chunk by chunk of positions (``chunk``
        caps the chunk), in float64, and become the ``precision`` buffer.
        """
        with torch.autocast(self.count.device.type, enabled=False):
            self._finalize(reduce, chunk)

    def _finalize(self, reduce: bool, chunk: int | None) -> None:
        device = self.count.device
        n_local = float(self.count)
        if self.sum_outer.numel() == 0:  # this process saw no data
            self._allocate(torch.zeros(self.positions, self.dim, dtype=torch.float64, device=device))
        centred = self.sum / max(n_local, 1.0)  # mean of (x − shift)
        mean = centred + self.shift if n_local > 0 else torch.zeros_like(self.shift)
        n = torch.tensor(n_local, dtype=torch.float64, device=device)
        distributed = reduce and torch.distributed.is_available() and torch.distributed.is_initialized()
        delta = None
        if distributed:
            weighted = mean * n
            torch.distributed.all_reduce(n)
            torch.distributed.all_reduce(weighted)
            total_mean = weighted / n.clamp_min(1)
            delta = mean - total_mean
            mean = total_mean
        if float(n) < 2:
            self._release()
            raise DegenerateStatisticsError(
                f"PaDiM needs at least 2 training images to estimate a covariance, got {int(n)}; "
                "add normal training images."
            )
        step = self.chunk_size(chunk)
        storage = self.sum_outer

        def scatter(start: int) -> Tensor:
            """Float64 scatter about this process's mean (or, under DDP, about the global mean)."""
            block = storage[start : start + step].to(torch.float64)
            c = centred[start : start + step]
            block.baddbmm_(c.unsqueeze(2), c.unsqueeze(1), alpha=-n_local)
            if delta is not None:
                d = delta[start : start + step]
                block.baddbmm_(d.unsqueeze(2), d.unsqueeze(1), alpha=n_local)
            return block

        if distributed:
            for start in range(0, self.positions, step):
                storage[start : start + step] = scatter(start).to(storage.dtype)
            torch.distributed.all_reduce(storage)
        eye = self.epsilon * torch.eye(self.dim, dtype=torch.float64, device=device)
        # Batched LAPACK on many small matrices is far faster single-threaded (no OpenMP overhead per
        # matrix); chunks bound the float64 temporaries.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            for start in range(0, self.positions, step):
                block = storage[start : start + step].to(torch.float64) if distributed else scatter(start)
                cov = block.div_(float(n) - 1).add_(eye)
                chol, info = torch.linalg.cholesky_ex(cov)
                if bool((info != 0).any()):
                    self._release()
                    raise DegenerateStatisticsError(
                        "A PaDiM covariance is not positive definite (non-finite features or "
                        f"model.epsilon={self.epsilon} too small); raise model.epsilon or check the features."
                    )
                storage[start : start + step] = torch.cholesky_inverse(chol).to(storage.dtype)
                del block, cov, chol
        finally:
            torch.set_num_threads(threads)
        self.mean.copy_(mean.to(self.mean.dtype))
        self.precision = storage
        self.sum_outer = torch.empty(0, dtype=torch.float64, device=device)
        self.fitted.fill_(True)
        self._release()

    def mahalanobis(self, embedding: Tensor, chunk: int = 1024) -> Tensor:
        """Distances √((x−μ)ᵀ Σ⁻¹ (x−μ)) of N×P×d embeddings → N×P (float32 or wider), in chunks of positions."""
        if not bool(self.fitted) or self.precision.numel() == 0:
            raise DegenerateStatisticsError("The Gaussian statistics are not fitted; train the model first.")
        dtype = float32_or_wider(self.precision.dtype)
        with torch.autocast(embedding.device.type, enabled=False):
            embedding = embedding.to(dtype)
            mean, precision = self.mean.to(dtype), self.precision.to(dtype)
            out = embedding.new_empty(embedding.shape[:2])
            for start in range(0, embedding.shape[1], chunk):
                stop = start + chunk
                # Contiguous p×N×d: bmm on a strided batch takes a slow path (100× slower with 2 threads).
                delta = (embedding[:, start:stop].transpose(0, 1) - mean[start:stop, None]).contiguous()
                projected = torch.bmm(delta, precision[start:stop])
                out[:, start:stop] = (projected * delta).sum(-1).clamp_min(0).sqrt().transpose(0, 1)
        return out

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        """Allocate Σ⁻¹ (P×d×d) when a state dict brings one; a checkpoint of other shapes still fails."""
        incoming = state_dict.get(prefix + "precision")
        if incoming is not None and incoming.numel() == 0:  # an unfitted model's state
            self.precision = torch.empty(0, dtype=self.storage_dtype, device=self.mean.device)
        elif incoming is not None and self.precision.numel() == 0:
            self.precision = torch.empty(self.positions, self.dim, self.dim, dtype=self.storage_dtype,
                                         device=self.mean.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
