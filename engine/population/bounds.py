"""Smooth bijection between the flow's unconstrained space R^D and the parameter box.

The flow produces ``u`` in R^D; the physical parameters are

    theta = lo + (hi - lo) * (eps + (1 - 2 eps) * sigmoid(scale * u))

with ``scale = 1.702`` (so that ``sigmoid(1.702 u)`` is within 0.01 of the normal CDF: a standard-normal
``u`` maps to an almost uniform population over the box -- the broad initial population) and a small
``eps`` that keeps every sample strictly inside the box even when the sigmoid saturates to exactly 0 or
1 in float32.  A final clamp to the open interval (next representable number inside each bound) guards
against rounding of ``lo + (hi - lo) * s``.
"""
from __future__ import annotations

import math

import torch
from torch import nn

#: sigmoid(1.702 x) approximates the standard normal CDF to within 0.01.
LOGISTIC_SCALE = 1.702


class BoxBijection(nn.Module):
    """Map R^D <-> the open box ``(lo, hi)`` per dimension, smoothly and monotonically.

    Parameters
    ----------
    bounds: tensor (D, 2) of (lo, hi); hi > lo for every dimension.
    eps: relative margin kept from each bound (float32-safe default 1e-6).
    """

    def __init__(self, bounds: torch.Tensor, eps: float = 1e-6, scale: float = LOGISTIC_SCALE):
        super().__init__()
        bounds = torch.as_tensor(bounds, dtype=torch.float64)
        if bounds.ndim != 2 or bounds.shape[1] != 2:
            raise ValueError(f"bounds must have shape (D, 2), got {tuple(bounds.shape)}")
        if not bool(torch.all(bounds[:, 1] > bounds[:, 0])):
            raise ValueError("every bound needs hi > lo")
        self.eps = float(eps)
        self.scale = float(scale)
        self.register_buffer("lo", bounds[:, 0].to(torch.float32).clone())
        self.register_buffer("hi", bounds[:, 1].to(torch.float32).clone())

    @property
    def dim(self) -> int:
        return int(self.lo.shape[0])

    def _open_limits(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        lo = self.lo.to(dtype)
        hi = self.hi.to(dtype)
        return torch.nextafter(lo, hi), torch.nextafter(hi, lo)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        """R^D -> box.  Differentiable; the result is strictly inside the box."""
        lo = self.lo.to(u.dtype)
        hi = self.hi.to(u.dtype)
        s = self.eps + (1.0 - 2.0 * self.eps) * torch.sigmoid(self.scale * u)
        theta = lo + (hi - lo) * s
        lo_in, hi_in = self._open_limits(u.dtype)
        # clamp only acts on float rounding at the bounds (gradient is kept elsewhere)
        return torch.maximum(torch.minimum(theta, hi_in), lo_in)

    def inverse(self, theta: torch.Tensor) -> torch.Tensor:
        """Box -> R^D (values on or outside the bounds are clipped to the margin first)."""
        lo = self.lo.to(theta.dtype)
        hi = self.hi.to(theta.dtype)
        s = (theta - lo) / (hi - lo)
        s = (s - self.eps) / (1.0 - 2.0 * self.eps)
        tiny = max(self.eps * 1e-3, torch.finfo(theta.dtype).eps)
        s = s.clamp(tiny, 1.0 - tiny)
        return torch.logit(s) / self.scale

    def log_abs_det_jacobian(self, u: torch.Tensor) -> torch.Tensor:
        """log |d theta / d u| summed over dimensions, per row (for completeness / tests)."""
        lo = self.lo.to(u.dtype)
        hi = self.hi.to(u.dtype)
        ls = torch.nn.functional.logsigmoid(self.scale * u)
        l1s = torch.nn.functional.logsigmoid(-self.scale * u)
        per = torch.log(hi - lo) + math.log(1.0 - 2.0 * self.eps) + math.log(self.scale) + ls + l1s
        return per.sum(-1)
