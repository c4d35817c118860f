"""Rational-quadratic spline with linear tails (Durkan et al. 2019, NeurIPS, "Neural Spline Flows"),
laid out for speed on CPU.

Mathematically identical to nflows' ``unconstrained_rational_quadratic_spline`` (same bin-width/height
floors, same derivative parametrisation, same ``tails="linear"`` identity outside ``[-B, B]``; equal to
1e-10 in float64, gradients included, in ``tests/test_flow_spline.py``), but computed with the bins on the
*leading* axis, (K, M) instead of (M, K):

- torch's softmax/cumsum over a last axis of size K ≈ 8 run one tiny row at a time on CPU; over the
  leading axis they are vectorised over M;
- the bin is found by K comparisons, not ``searchsorted``;
- values outside the interval are handled with ``torch.where`` on clamped inputs rather than boolean
  indexing and scatter.

In the population trainer the flow's splines were half of each step (profile of ``popsed fit``).
:class:`FastRQCouplingTransform` is nflows' coupling transform with this spline; its parameters and
state dict are nflows' own.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from nflows import transforms
from torch.nn import functional as F

DEFAULT_MIN_BIN_WIDTH = 1e-3
DEFAULT_MIN_BIN_HEIGHT = 1e-3
DEFAULT_MIN_DERIVATIVE = 1e-3


def _knots(unnormalised: torch.Tensor, lo: float, hi: float,
           min_size: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Knot positions (K+1, M) and bin sizes (K, M) from unnormalised sizes (K, M)."""
    k = unnormalised.shape[0]
    size = min_size + (1.0 - min_size * k) * torch.softmax(unnormalised, dim=0)
    cum = torch.cumsum(size, dim=0)
    cum = torch.cat([torch.zeros_like(cum[:1]), cum], 0) * (hi - lo) + lo
    cum = torch.cat([torch.full_like(cum[:1], lo), cum[1:-1], torch.full_like(cum[:1], hi)], 0)
    return cum, cum[1:] - cum[:-1]


def rq_spline(inputs: torch.Tensor, unnormalized_widths: torch.Tensor, unnormalized_heights: torch.Tensor,
              unnormalized_derivatives: torch.Tensor, inverse: bool = False, tail_bound: float = 1.0,
              min_bin_width: float = DEFAULT_MIN_BIN_WIDTH, min_bin_height: float = DEFAULT_MIN_BIN_HEIGHT,
              min_derivative: float = DEFAULT_MIN_DERIVATIVE) -> tuple[torch.Tensor, torch.Tensor]:
    """Monotone rational-quadratic spline on [−B, B], identity outside (Durkan et al. 2019, Eqs. 4–8).

    Parameters
    ----------
    inputs : Tensor (...)
    unnormalized_widths, unnormalized_heights : Tensor (..., K)
    unnormalized_derivatives : Tensor (..., K − 1)
        Interior knot derivatives before ``softplus`` (the two end derivatives are 1: linear tails).
    inverse : bool
        Evaluate the inverse map.

    Returns
    -------
    outputs : Tensor (...)
    logabsdet : Tensor (...)
        log |d outputs / d inputs|.
    """
    shape = inputs.shape
    k = unnormalized_widths.shape[-1]
    if min_bin_width * k > 1.0 or min_bin_height * k > 1.0:
        raise ValueError("minimal bin width or height too large for the number of bins")
    x = inputs.reshape(-1)
    uw = unnormalized_widths.reshape(-1, k).T.contiguous()
    uh = unnormalized_heights.reshape(-1, k).T.contiguous()
    ud = unnormalized_derivatives.reshape(-1, k - 1).T.contiguous()
    b = float(tail_bound)
    cw, w = _knots(uw, -b, b, min_bin_width)
    ch, h = _knots(uh, -b, b, min_bin_height)
    # end derivatives: min_derivative + softplus(log(e^{1 - min_derivative} - 1)) = 1 (linear tails)
    end = torch.full_like(ud[:1], math.log(math.expm1(1.0 - min_derivative)))
    d = min_derivative + F.softplus(torch.cat([end, ud, end], 0))  # (K+1, M)

    inside = (x >= -b) & (x <= b)
    xc = x.clamp(-b, b)
    knots = ch if inverse else cw
    idx = (xc.detach().unsqueeze(0) >= knots[1:k].detach()).sum(0, keepdim=True)  # (1, M), in [0, K-1]

    def at(t: torch.Tensor) -> torch.Tensor:
        return t.gather(0, idx).squeeze(0)

    in_cw, in_w, in_ch, in_h = at(cw), at(w), at(ch), at(h)
    in_delta = in_h / in_w
    d0, d1 = at(d), d[1:].gather(0, idx).squeeze(0)
    s = d0 + d1 - 2.0 * in_delta
    if inverse:
        dy = xc - in_ch
        a = dy * s + in_h * (in_delta - d0)
        bb = in_h * d0 - dy * s
        c = -in_delta * dy
        disc = (bb * bb - 4.0 * a * c).clamp_min(0.0)
        t = (2.0 * c) / (-bb - torch.sqrt(disc))
        out = t * in_w + in_cw
    else:
        t = (xc - in_cw) / in_w
    t1t = t * (1.0 - t)
    denom = in_delta + s * t1t
    deriv_num = in_delta * in_delta * (d1 * t * t + 2.0 * in_delta * t1t + d0 * (1.0 - t) * (1.0 - t))
    lad = torch.log(deriv_num) - 2.0 * torch.log(denom)
    if inverse:
        lad = -lad
    else:
        out = in_ch + in_h * (in_delta * t * t + d0 * t1t) / denom
    out = torch.where(inside, out, x)
    lad = torch.where(inside, lad, torch.zeros_like(lad))
    return out.reshape(shape), lad.reshape(shape)


class FastRQCouplingTransform(transforms.PiecewiseRationalQuadraticCouplingTransform):
    """nflows' rational-quadratic coupling transform (linear tails) evaluated with :func:`rq_spline`.

    Same parameters, state dict and results as the nflows class; only the spline's tensor layout differs.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.tails != "linear":
            raise ValueError("FastRQCouplingTransform implements tails='linear' only")

    def _piecewise_cdf(self, inputs, transform_params, inverse=False):
        k = self.num_bins
        # nflows scales the width/height logits by 1/sqrt(hidden features) at initialisation scale
        scale = 1.0 / np.sqrt(self.transform_net.hidden_features)
        return rq_spline(inputs, transform_params[..., :k] * scale, transform_params[..., k:2 * k] * scale,
                         transform_params[..., 2 * k:], inverse=inverse, tail_bound=self.tail_bound,
                         min_bin_width=self.min_bin_width, min_bin_height=self.min_bin_height,
                         min_derivative=self.min_derivative)
