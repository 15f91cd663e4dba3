"""Flow blocks: exact inverses, exact log-determinants (against autograd Jacobians), the soft clamp."""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch
from torch import nn

from anomaly.nn.flows import (
    AffineCoupling,
    ClampError,
    DenseCoupling,
    Flow,
    FlowInputError,
    Permutation,
    soft_clamp,
)


def randomize(module: nn.Module, seed: int = 0, scale: float = 0.5) -> nn.Module:
    """Non-trivial weights so every coupling does something (also beyond the clamp's linear range)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=generator, dtype=p.dtype) * scale)
    return module


BLOCKS = [
    ("plain", lambda d: AffineCoupling(d, [16, 16], clamp=3.0)),
    ("permutation", lambda d: Permutation(d, seed=3)),
    *[(f"dense-depth{k}", partial(DenseCoupling, hidden=[16], clamp=2.0, depth=k)) for k in (1, 2, 3, 4)],
    *[(f"flow-plain-{n}", partial(Flow, kind="plain", n_blocks=n, hidden=[12], clamp=3.0)) for n in (1, 3)],
    *[(f"flow-dense-depth{k}", partial(Flow, kind="dense", n_blocks=2, hidden=[12], clamp=2.0, depth=k))
      for k in (1, 2, 3)],
]


@pytest.mark.parametrize("dim", [5, 8])
@pytest.mark.parametrize(("name", "make"), BLOCKS, ids=[b[0] for b in BLOCKS])
def test_inverse_and_log_determinant(name: str, make, dim: int) -> None:
    torch.manual_seed(0)
    block = randomize(make(dim)).double()
    x = torch.randn(4, dim, dtype=torch.float64) * 2
    y, logdet = block(x)
    assert y.shape == x.shape and logdet.shape == (4,)
    assert torch.allclose(block.inverse(y), x, atol=1e-5)
    assert not torch.allclose(y, x)
    for i in range(x.shape[0]):
        jac = torch.autograd.functional.jacobian(lambda v: block(v[None])[0][0], x[i])
        sign, expected = torch.linalg.slogdet(jac)
        assert sign != 0
        assert torch.allclose(logdet[i], expected, atol=1e-8), (name, float(logdet[i]), float(expected))


def test_dense_block_fills_the_lower_triangle() -> None:
    """Depth 3 couples every lower-half feature with the upper features it depends on (not only halves)."""
    block = randomize(DenseCoupling(8, [16], clamp=2.0, depth=3)).double()
    jac = torch.autograd.functional.jacobian(lambda v: block(v[None])[0][0], torch.randn(8, dtype=torch.float64))
    assert torch.allclose(jac.triu(1), torch.zeros_like(jac))  # lower triangular: the inverse is exact
    assert (jac.tril(-1).abs() > 1e-9).sum() == 8 * 7 // 2  # and dense below the diagonal
    plain = randomize(DenseCoupling(8, [16], clamp=2.0, depth=1)).double()
    jac = torch.autograd.functional.jacobian(lambda v: plain(v[None])[0][0], torch.randn(8, dtype=torch.float64))
    assert (jac.tril(-1).abs() > 1e-9).sum() == 16  # one coupling: only the lower-left quarter


def test_soft_clamp_formula() -> None:
    s = torch.linspace(-50, 50, 101)
    for alpha in (0.5, 2.0, 3.0):
        expected = torch.tensor([2 * alpha / math.pi * math.atan(v / alpha) for v in s.tolist()])
        assert torch.allclose(soft_clamp(s, alpha), expected, atol=1e-6)
        assert soft_clamp(s, alpha).abs().max() < alpha
    small = torch.tensor([1e-3])
    assert torch.allclose(soft_clamp(small, 2.0), small * 2 / math.pi, rtol=1e-5)  # slope 2/π at zero


def test_clamp_scale_bounds_the_log_scale() -> None:
    block = randomize(AffineCoupling(6, [8], clamp=0.1), scale=5.0).double()
    _, logdet = block(torch.randn(3, 6, dtype=torch.float64) * 10)
    assert logdet.abs().max() <= 0.1 * 6


@pytest.mark.parametrize("alpha", [0.0, -1.0])
@pytest.mark.parametrize("make", [lambda a: AffineCoupling(4, [8], a), lambda a: DenseCoupling(4, [8], a),
                                  lambda a: Flow(4, "dense", 2, [8], clamp=a)])
def test_non_positive_clamp_is_one_sentence(make, alpha: float) -> None:
    with pytest.raises(ClampError, match=r"^model\.clamp=.* must be a positive number .*\.$"):
        make(alpha)


def test_flow_refuses_other_feature_sizes() -> None:
    flow = Flow(6, "plain", 2, [8], clamp=3.0)
    with pytest.raises(FlowInputError, match=r"built for 6-dim features but got shape \(2, 7\)"):
        flow(torch.randn(2, 7))
    with pytest.raises(FlowInputError, match="model.kind=foo"):
        Flow(6, "foo", 2, [8])


def test_permutations_are_seeded_buffers() -> None:
    a, b, c = Flow(10, "plain", 3, [8], seed=1), Flow(10, "plain", 3, [8], seed=1), Flow(10, "plain", 3, [8], seed=2)
    assert "blocks.0.perm" in a.state_dict()
    assert torch.equal(a.blocks[0].perm, b.blocks[0].perm) and not torch.equal(a.blocks[0].perm, c.blocks[0].perm)
    assert not torch.equal(a.blocks[0].perm, a.blocks[2].perm)


def test_nll_is_per_dimension() -> None:
    flow = Flow(4, "plain", 1, [8])
    x = torch.randn(3, 4)
    z, logdet = flow(x)
    assert torch.allclose(flow.nll(x), (0.5 * z.pow(2).sum(1) - logdet) / 4)


CONDITIONED = [
    ("plain", lambda d: AffineCoupling(d, [16, 16], clamp=3.0, cond_dim=3)),
    *[(f"dense-depth{k}", partial(DenseCoupling, hidden=[16], clamp=2.0, depth=k, cond_dim=3)) for k in (1, 3)],
    ("flow-plain", partial(Flow, kind="plain", n_blocks=2, hidden=[12], clamp=3.0, cond_dim=3)),
    ("flow-dense", partial(Flow, kind="dense", n_blocks=2, hidden=[12], clamp=2.0, depth=3, cond_dim=3)),
]


@pytest.mark.parametrize(("name", "make"), CONDITIONED, ids=[b[0] for b in CONDITIONED])
def test_conditioned_blocks_invert_and_have_exact_log_determinants(name: str, make) -> None:
    """With a condition (CFlow-style), x → z → x is exact and log|det ∂z/∂x| matches autograd; the
    condition changes the output (every subnet sees it)."""
    torch.manual_seed(0)
    block = randomize(make(6)).double()
    x = torch.randn(4, 6, dtype=torch.float64) * 2
    cond = torch.randn(4, 3, dtype=torch.float64)
    y, logdet = block(x, cond)
    assert torch.allclose(block.inverse(y, cond), x, atol=1e-5)
    assert not torch.allclose(block(x, cond + 1)[0], y)
    for i in range(x.shape[0]):
        c = cond[i : i + 1]
        jac = torch.autograd.functional.jacobian(lambda v, c=c: block(v[None], c)[0][0], x[i])
        assert torch.allclose(logdet[i], torch.linalg.slogdet(jac)[1], atol=1e-8), name


def test_flow_refuses_a_missing_or_unexpected_condition() -> None:
    conditioned, plain = Flow(6, "dense", 1, [8], 2.0, cond_dim=3), Flow(6, "dense", 1, [8], 2.0)
    x = torch.randn(2, 6)
    with pytest.raises(FlowInputError, match="3-dim condition per sample, got None"):
        conditioned(x)
    with pytest.raises(FlowInputError, match=r"3-dim condition per sample, got \(2, 4\)"):
        conditioned(x, torch.randn(2, 4))
    with pytest.raises(FlowInputError, match="built without a condition"):
        plain(x, torch.randn(2, 3))


def test_position_encoding_matches_cflow_and_tells_cells_apart() -> None:
    from anomaly.nn.flows.position import position_encoding

    code = position_encoding(4, 8).view(4, 4, 8)  # row, column, channel
    # CFlow's positionalencoding2d: channels [0, D/2) encode the column, [D/2, D) the row,
    # sin at even and cos at odd channels, frequencies 10000^(−2k/(D/2)).
    for row, column in [(0, 0), (1, 2), (3, 3)]:
        for k, frequency in enumerate([1.0, 0.01]):
            assert code[row, column, 2 * k].item() == pytest.approx(math.sin(column * frequency), abs=1e-6)
            assert code[row, column, 2 * k + 1].item() == pytest.approx(math.cos(column * frequency), abs=1e-6)
            assert code[row, column, 4 + 2 * k].item() == pytest.approx(math.sin(row * frequency), abs=1e-6)
    flat = code.view(16, 8)
    assert torch.cdist(flat, flat).add(torch.eye(16)).min() > 1e-3  # every cell has its own code
    with pytest.raises(FlowInputError, match="multiple of 4"):
        position_encoding(4, 6)
