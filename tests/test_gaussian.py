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


def previous_algorithm_distances(x: torch.Tensor, query: torch.Tensor, epsilon: float) -> torch.Tensor:
    """The float64 reference: μ and (Σ_{N−1} + ε·I)⁻¹ from the whole data set, then √ of the quadratic form."""
    x, query = x.double(), query.double()
    mean = x.mean(0)
    delta = query - mean
    return torch.einsum("npi,pij,npj->np", delta, reference_precision(x, epsilon), delta).sqrt()


def test_float32_sums_give_the_float64_distances_with_fewer_images_than_dimensions() -> None:
    """PaDiM's regime: N < d (the ridge makes Σ invertible), large offsets and mixed channel scales."""
    torch.manual_seed(5)
    scales = torch.logspace(-1, 1, 48)
    x = torch.randn(30, 6, 48) * scales + 50.0
    query = torch.randn(3, 6, 48) * scales * 1.5 + 50.0
    g = fitted(x, [7, 16, 7])
    torch.testing.assert_close(g.mahalanobis(query).double(), previous_algorithm_distances(x, query, 0.01),
                               rtol=1e-5, atol=1e-5)


def test_nothing_is_allocated_up_front_and_the_precision_reuses_the_sums_storage() -> None:
    g = PositionalGaussian(positions=10, dim=8)
    assert g.precision.numel() == 0 and not bool(g.fitted)  # no P×d×d buffer before fitting
    g.accumulate(torch.randn(5, 10, 8))
    assert g.sum_outer.dtype == torch.float32 and g.sum_outer.shape == (10, 8, 8)  # the one P×d×d block
    storage = g.sum_outer.data_ptr()
    g.finalize(chunk=3)  # chunk by chunk, in place
    assert g.precision.shape == (10, 8, 8) and g.precision.data_ptr() == storage
    assert g.sum_outer.numel() == 0
    g.reset()  # a refit frees the old Σ⁻¹ before accumulating again
    assert g.precision.numel() == 0 and not bool(g.fitted)


def test_chunk_size_does_not_change_the_statistics() -> None:
    torch.manual_seed(6)
    x = torch.randn(20, 11, 6) + 2.0
    a = PositionalGaussian(11, 6)
    b = PositionalGaussian(11, 6)
    for part in x.split(5):
        a.accumulate(part)
        b.accumulate(part, chunk=2)
    a.finalize()
    b.finalize(chunk=4)
    torch.testing.assert_close(a.precision, b.precision, rtol=1e-6, atol=1e-6)


def test_a_fitted_state_loads_into_a_fresh_module_and_other_shapes_still_fail() -> None:
    torch.manual_seed(7)
    g = fitted(torch.randn(12, 4, 3), [12])
    fresh = PositionalGaussian(4, 3)
    fresh.load_state_dict(g.state_dict())
    query = torch.randn(2, 4, 3)
    torch.testing.assert_close(fresh.mahalanobis(query), g.mahalanobis(query))
    with pytest.raises(RuntimeError, match="size mismatch"):
        PositionalGaussian(4, 5).load_state_dict(g.state_dict())
    unfitted = PositionalGaussian(4, 3).state_dict()
    fresh.load_state_dict(unfitted)  # an unfitted state (empty Σ⁻¹) loads too, and is unfitted
    assert not bool(fresh.fitted) and fresh.precision.numel() == 0


def test_statistics_and_distances_stay_float32_under_bfloat16_autocast() -> None:
    torch.manual_seed(8)
    x = torch.randn(25, 5, 16) * 3 + 10.0
    query = torch.randn(2, 5, 16) * 3 + 10.0
    plain = fitted(x, [25])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        g = PositionalGaussian(5, 16)
        g.accumulate(x)
        g.finalize()
        distance = g.mahalanobis(query)
    assert distance.dtype == torch.float32
    torch.testing.assert_close(distance, plain.mahalanobis(query), rtol=1e-6, atol=1e-6)


def test_degenerate_statistics_are_one_sentence_user_errors() -> None:
    from anomaly.utils.errors import user_message

    g = PositionalGaussian(2, 2)
    g.accumulate(torch.randn(1, 2, 2))
    with pytest.raises(DegenerateStatisticsError) as one_image:
        g.finalize()
    assert user_message(one_image.value) == str(one_image.value)
    g = PositionalGaussian(2, 3, epsilon=-10.0)
    g.accumulate(torch.randn(6, 2, 3))
    with pytest.raises(DegenerateStatisticsError, match="not positive definite.*raise model.epsilon") as not_pd:
        g.finalize()
    assert user_message(not_pd.value) == str(not_pd.value) and "\n" not in str(not_pd.value)
    with pytest.raises(DegenerateStatisticsError, match="not fitted") as unfitted:
        PositionalGaussian(2, 3).mahalanobis(torch.randn(1, 2, 3))
    assert user_message(unfitted.value) is not None


def test_total_minus_a_fold_gives_the_statistics_of_the_other_samples() -> None:
    """``complement``: sums of a fold begun about the total's shift, subtracted from the total's, fit the
    samples outside the fold (the definition: torch.cov of them), without a pass over them."""
    torch.manual_seed(0)
    x = torch.randn(40, 5, 8) * 0.5 + 3.0
    fold = torch.zeros(40, dtype=torch.bool)
    fold[[1, 7, 8, 20, 21, 33, 39]] = True
    total = PositionalGaussian(5, 8)
    for part in torch.split(x, [16, 24]):
        total.accumulate(part)
    left = PositionalGaussian(5, 8)
    left.start(total.shift)
    for part in torch.split(x[fold], [3, 4]):
        left.accumulate(part)
    left.complement(total)
    left.finalize()
    torch.testing.assert_close(left.mean, x[~fold].mean(0), atol=1e-5, rtol=0)
    torch.testing.assert_close(left.precision.double(), reference_precision(x[~fold], 0.01), rtol=1e-4, atol=1e-4)
    other = PositionalGaussian(5, 8)
    other.accumulate(x[fold])  # about its own shift: not subtractable
    with pytest.raises(ValueError, match="start"):
        other.complement(total)
