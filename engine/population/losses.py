"""Optimal-transport losses between predicted and observed photometry (standardised space).

- :func:`sliced_wasserstein`: sliced Wasserstein distance, O(P N log N): ``P`` random unit directions
  (fresh every call, drawn from the caller's generator), projections laid out as (P, N) and sorted along
  the last dimension.  Samples of different sizes are compared through their quantile functions
  (linear interpolation of the sorted projections at common quantile levels), so the predicted sample
  (whose size varies with the selection) and the observed one need not match.
- :class:`SinkhornLoss`: geomloss ``SamplesLoss("sinkhorn", p=1, blur, scaling)``; the blur is passed per
  call, so it can be annealed.  Without KeOps, geomloss' ``tensorized`` backend builds the N x M cost
  matrix (memory N*M*4 bytes per matrix): fine on a GPU, slow on CPU (see ``bench/train_step.py``).

Both return a scalar tensor differentiable with respect to the predicted points.
"""
from __future__ import annotations

import numpy as np
import torch

LOSSES = ("sliced", "sinkhorn")


def random_directions(dim: int, n_proj: int, generator: torch.Generator | None, device,
                      dtype=torch.float32) -> torch.Tensor:
    """``n_proj`` unit vectors in R^dim as a (dim, n_proj) matrix."""
    d = torch.randn(dim, n_proj, generator=generator, device=device, dtype=dtype)
    return d / d.norm(dim=0, keepdim=True).clamp_min(1e-12)


def sort_rows(t: torch.Tensor, with_order: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Sort each row of ``t`` (P, N): (values, order or None).

    Differentiable in ``t`` (values are gathered by the order).  On CPU the order comes from numpy, whose
    vectorised (SIMD) sorts of rows of a few thousand floats are several times faster than torch's; on other
    devices torch sorts.  ``order`` is None when neither ``with_order`` nor a gradient asked for it.
    """
    if t.device.type != "cpu":
        v, order = torch.sort(t, dim=-1)
        return v, order
    a = t.detach().numpy()
    if not (with_order or t.requires_grad):
        return torch.from_numpy(np.sort(a, axis=-1)), None
    order = torch.from_numpy(np.argsort(a, axis=-1))
    return t.gather(-1, order), order


def _quantiles(sorted_proj: torch.Tensor, m: int) -> torch.Tensor:
    """Quantile function of each row of ``sorted_proj`` (P, N) at levels (i + 0.5) / m, i < m."""
    n = sorted_proj.shape[-1]
    if n == m:
        return sorted_proj
    pos = (torch.arange(m, device=sorted_proj.device, dtype=sorted_proj.dtype) + 0.5) * (n / m) - 0.5
    pos = pos.clamp(0, n - 1)
    lo = pos.floor().long()
    hi = (lo + 1).clamp(max=n - 1)
    w = pos - lo.to(pos.dtype)
    return sorted_proj[:, lo] * (1 - w) + sorted_proj[:, hi] * w


def _count_below_uniform_levels(mid: torch.Tensor, m: int) -> torch.Tensor:
    """For rows of non-decreasing ``mid`` (P, N) in [0, 1] and the levels u_i = (i + 0.5) / m, i < m: the
    number of entries of each row below each level, (P, m) -- ``searchsorted(mid, u)`` without the
    binary searches: entry j lies below exactly the levels i >= c_j = round(mid_j m), so the counts are a
    cumulative histogram of c (O(P (N + m)), vectorised)."""
    p = mid.shape[0]
    c = torch.floor(mid * m + 0.5).clamp(0, m).long()
    hist = torch.zeros(p, m + 1, dtype=torch.long, device=mid.device)
    hist.scatter_add_(1, c, torch.ones_like(c))
    return torch.cumsum(hist[:, :m], dim=1)


def _weighted_quantiles(sorted_vals: torch.Tensor, sorted_w: torch.Tensor, m: int) -> torch.Tensor:
    """Quantile function of weighted 1-D samples (rows of ``sorted_vals`` (P, N), sorted, with normalised
    weights ``sorted_w`` (P, N)) at the levels (i + 0.5) / m, i < m, by linear interpolation between the
    samples' mass mid-points; differentiable in the values *and* the weights."""
    c = torch.cumsum(sorted_w, dim=-1)
    mid = c - 0.5 * sorted_w  # (P, N), non-decreasing
    u = ((torch.arange(m, device=mid.device, dtype=mid.dtype) + 0.5) / m).expand(mid.shape[0], -1)
    n = mid.shape[-1]
    hi = _count_below_uniform_levels(mid.detach(), m).clamp(1, n - 1)
    lo = hi - 1
    m_lo, m_hi = mid.gather(1, lo), mid.gather(1, hi)
    v_lo, v_hi = sorted_vals.gather(1, lo), sorted_vals.gather(1, hi)
    t = ((u - m_lo) / (m_hi - m_lo).clamp_min(1e-12)).clamp(0.0, 1.0)
    return v_lo + (v_hi - v_lo) * t


def sliced_wasserstein(
    x: torch.Tensor,
    y: torch.Tensor,
    n_proj: int = 200,
    p: int = 2,
    generator: torch.Generator | None = None,
    directions: torch.Tensor | None = None,
    x_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sliced p-Wasserstein distance between point clouds ``x`` (N, D) and ``y`` (M, D).

    ``(mean over directions of W_p^p of the 1-D projections) ** (1/p)``.  Directions are fresh random
    unit vectors drawn from ``generator`` unless given as a (D, P) matrix.  ``x_weights`` (N,),
    non-negative, optional: a weighted ``x`` (the loss is then differentiable in the weights too; the
    trainer uses it for the selection, see ``engine.population.trainer``).
    """
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"point clouds must be (N, D) and (M, D) with the same D, got {tuple(x.shape)} and "
                         f"{tuple(y.shape)}")
    if x.shape[0] == 0 or y.shape[0] == 0:
        raise ValueError("sliced_wasserstein needs non-empty point clouds")
    if directions is None:
        directions = random_directions(x.shape[1], n_proj, generator, x.device, x.dtype)
    px = (x @ directions).T.contiguous()  # (P, N)
    py = (y @ directions).T.contiguous()  # (P, M)
    py = sort_rows(py)[0]
    if x_weights is None:
        px = sort_rows(px)[0]
        m = max(px.shape[-1], py.shape[-1])
        qx = _quantiles(px, m)
        qy = _quantiles(py, m)
    else:
        if x.shape[0] < 2:
            raise ValueError("weighted sliced_wasserstein needs at least 2 points in x")
        w = x_weights / x_weights.sum().clamp_min(1e-30)
        px, order = sort_rows(px, with_order=True)
        ws = w[order]
        qx = _weighted_quantiles(px, ws, py.shape[-1])
        qy = py
    diff = (qx - qy).abs()
    if p == 1:
        return diff.mean()
    return diff.pow(p).mean().clamp_min(1e-30).pow(1.0 / p)


def _keops_available() -> bool:
    try:
        import pykeops  # noqa: F401  (optional: geomloss's KeOps backend)
    except Exception:
        return False
    return True


class SinkhornLoss:
    """geomloss Sinkhorn divergence with a per-call blur (for annealing)."""

    def __init__(self, p: int = 1, scaling: float = 0.8, backend: str | None = None):
        # lazy: only the Sinkhorn loss needs geomloss (and its KeOps probe)
        from geomloss import SamplesLoss

        self.p = p
        self.scaling = scaling
        self.backend = backend or ("auto" if _keops_available() else "tensorized")
        self._cls = SamplesLoss
        self._cache: dict[float, object] = {}

    def __call__(self, x: torch.Tensor, y: torch.Tensor, blur: float,
                 x_weights: torch.Tensor | None = None) -> torch.Tensor:
        key = float(blur)
        fn = self._cache.get(key)
        if fn is None:
            fn = self._cls("sinkhorn", p=self.p, blur=key, scaling=self.scaling, backend=self.backend)
            self._cache = {key: fn}
        if x_weights is None:
            return fn(x, y)
        a = x_weights / x_weights.sum()
        b = torch.full((y.shape[0],), 1.0 / y.shape[0], device=y.device, dtype=y.dtype)
        return fn(a, x, b, y)


class BlurSchedule:
    """Piecewise-constant Sinkhorn blur schedule.

    ``stages`` is a list of (fraction_of_training_end, blur): the reference code used 0.3, 0.2, 0.1, 0.05
    over the first quarter of training (10 of 40 epochs) and then its final blur.
    """

    def __init__(self, stages: list[tuple[float, float]] | None = None, final: float = 0.002):
        self.stages = list(stages) if stages is not None else [(0.0625, 0.3), (0.125, 0.2), (0.1875, 0.1),
                                                               (0.25, 0.05)]
        self.final = float(final)

    def __call__(self, step: int, steps: int) -> float:
        frac = step / max(steps, 1)
        for end, blur in self.stages:
            if frac < end:
                return float(blur)
        return self.final

    def to_dict(self) -> dict:
        return {"stages": [list(s) for s in self.stages], "final": self.final}

