"""The fast rational-quadratic spline equals nflows'.

The population flow's parameters and results are nflows'.
"""

from __future__ import annotations

import pytest
import torch
from nflows import transforms
from nflows.transforms.splines.rational_quadratic import unconstrained_rational_quadratic_spline

from engine.population.flow import PopulationFlow
from engine.population.spline import FastRQCouplingTransform, rq_spline
from engine.sps.params import PARAM_NAMES, param_bounds

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("inverse", [False, True])
def test_rq_spline_equals_nflows(inverse):
    g = torch.Generator().manual_seed(0)
    m, d, k, bound = 3000, 5, 8, 3.0
    x = torch.randn(m, d, generator=g, dtype=torch.float64) * 2.5  # ~23% outside [-3, 3]: linear tails
    params = [torch.randn(m, d, n, generator=g, dtype=torch.float64) * 2 for n in (k, k, k - 1)]
    ref_in = [t.clone().requires_grad_(True) for t in (x, *params)]
    new_in = [t.clone().requires_grad_(True) for t in (x, *params)]
    y_ref, l_ref = unconstrained_rational_quadratic_spline(*ref_in, inverse=inverse, tails="linear",
                                                           tail_bound=bound)
    y_new, l_new = rq_spline(*new_in, inverse=inverse, tail_bound=bound)
    torch.testing.assert_close(y_new, y_ref, rtol=0, atol=1e-10)
    torch.testing.assert_close(l_new, l_ref, rtol=0, atol=1e-8)
    outside = x.abs() > bound
    assert outside.any() and torch.equal(y_new[outside], x[outside]) and not l_new[outside].any()
    (y_ref.sin().sum() + l_ref.sum()).backward()
    (y_new.sin().sum() + l_new.sum()).backward()
    for a, b in zip(new_in, ref_in, strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-6, atol=1e-8)


def test_spline_round_trip():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2000, generator=g, dtype=torch.float64)
    p = [torch.randn(2000, n, generator=g, dtype=torch.float64) for n in (8, 8, 7)]
    y, l_fwd = rq_spline(x, *p, tail_bound=3.0)
    x2, l_inv = rq_spline(y, *p, inverse=True, tail_bound=3.0)
    torch.testing.assert_close(x2, x, rtol=0, atol=1e-9)
    torch.testing.assert_close(l_inv, -l_fwd, rtol=0, atol=1e-9)


def test_population_flow_uses_the_fast_spline_and_matches_nflows():
    b = param_bounds(0.65)
    bounds = torch.tensor([b[n] for n in PARAM_NAMES])
    torch.manual_seed(0)
    fast = PopulationFlow(bounds)
    assert any(isinstance(t, FastRQCouplingTransform) for t in fast.transform._transforms)
    with torch.no_grad():
        for p in fast.parameters():
            p.add_(0.3 * torch.randn_like(p))
    slow = PopulationFlow(bounds)
    for t in slow.transform._transforms:
        if isinstance(t, FastRQCouplingTransform):
            t.__class__ = transforms.PiecewiseRationalQuadraticCouplingTransform
    slow.load_state_dict(fast.state_dict())  # same parameters, same state-dict keys
    fast.double(), slow.double()
    x = torch.randn(3000, 11, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    a, la = fast.push(x, with_log_prob=True)
    b_, lb = slow.push(x, with_log_prob=True)
    torch.testing.assert_close(a, b_, rtol=0, atol=1e-9)
    torch.testing.assert_close(la, lb, rtol=0, atol=1e-4)
