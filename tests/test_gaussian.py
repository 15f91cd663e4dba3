"""PaDiM statistics: exact covariance from running sums, batch-split invariance, DDP reduction."""

from __future__ import annotations

import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from anomaly.nn.gaussian import DegenerateStatisticsError, PositionalGaussian


def reference_precision(x: torch.Tensor, epsilon: float) -> torch.Tensor:
    """Σ⁻¹ per position from the whole N×P×d tensor with torch.cov (float64)."""
    out = []
    for p in range(x.shape[1]):
        cov = torch.cov(x[:, p].T.double()) + epsilon * torch.eye(x.shape[2], dtype=torch.float64)
        out.append(torch.linalg.inv(cov))
    return torch.stack(out)


def fitted(x: torch.Tensor, splits: list[int]) -> PositionalGaussian:
    g = PositionalGaussian(x.shape[1], x.shape[2])
    for part in torch.split(x, splits):
        g.accumulate(part)
    g.finalize()
    return g


def test_running_sums_give_the_sample_covariance_even_with_a_large_offset() -> None:
    torch.manual_seed(0)
    x = torch.randn(64, 5, 8) * 0.1 + 1000.0  # cancellation-prone: mean ≫ std
    g = fitted(x, [64])
    torch.testing.assert_close(g.mean, x.mean(0), atol=1e-3, rtol=0)
    torch.testing.assert_close(g.precision.double(), reference_precision(x, 0.01), rtol=1e-4, atol=1e-3)


def test_result_does_not_depend_on_how_batches_split_the_data() -> None:
    torch.manual_seed(1)
    x = torch.randn(50, 7, 4)
    a, b = fitted(x, [50]), fitted(x, [3, 17, 30])
    torch.testing.assert_close(a.precision, b.precision, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a.mean, b.mean)


def test_mahalanobis_matches_the_definition_and_chunking() -> None:
    torch.manual_seed(2)
    x = torch.randn(40, 9, 3)
    g = fitted(x, [40])
    query = torch.randn(2, 9, 3)
    delta = (query - g.mean).double()
    expected = torch.einsum("npi,pij,npj->np", delta, g.precision.double(), delta).sqrt()
    torch.testing.assert_close(g.mahalanobis(query, chunk=2).double(), expected, rtol=1e-5, atol=1e-5)


def test_one_image_is_a_clear_error() -> None:
    g = PositionalGaussian(2, 2)
    g.accumulate(torch.randn(1, 2, 2))
    with pytest.raises(DegenerateStatisticsError, match="at least 2 training images"):
        g.finalize()


def test_saved_state_holds_only_the_model_not_the_sums() -> None:
    g = fitted(torch.randn(10, 3, 2), [10])
    assert set(g.state_dict()) == {"mean", "precision", "fitted"}


def _ddp_worker(rank: int, port: int, x: torch.Tensor, out: dict) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    g = PositionalGaussian(x.shape[1], x.shape[2])
    part = x[:30] if rank == 0 else x[30:]
    for batch in torch.split(part, 8):
        g.accumulate(batch)
    g.finalize(reduce=True)
    out[rank] = (g.mean.clone(), g.precision.clone())
    dist.destroy_process_group()


def test_ddp_reduction_equals_a_single_process_fit() -> None:
    torch.manual_seed(3)
    x = torch.randn(70, 6, 5) + 3.0
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    manager = mp.get_context("spawn").Manager()
    out = manager.dict()
    mp.start_processes(_ddp_worker, args=(port, x, out), nprocs=2, start_method="spawn")
    single = fitted(x, [70])
    for rank in (0, 1):
        mean, precision = out[rank]
        torch.testing.assert_close(mean, single.mean, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(precision, single.precision, atol=1e-4, rtol=1e-4)
