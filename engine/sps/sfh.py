"""Star-formation histories: four smooth bases plus a burst (Li et al. 2023, Eq. 1).

ψ(t) = M_formed · [(1 − f_burst) Σᵢ βᵢ Bᵢ(t) + f_burst δ(t − t_burst)],  t = lookback time.

The bases are defined on the fraction of cosmic time elapsed at the epoch of
formation, ``x = 1 − t / t_age(z)`` ∈ [0, 1] (x = 0 at the Big Bang, x = 1 at the
epoch of observation), so no star is ever older than the Universe at z.  Each
basis is a normalised density in x (Bᵢ(t) = pᵢ(x) / t_age):

====  ============  ============================  ===========================================
i     name          pᵢ(x) ∝                       behaviour
====  ============  ============================  ===========================================
1     early         x · exp(−x / 0.1)             peaks at 10 % of t_age, then quenched
2     declining     exp(−x / 0.3)                 exponentially declining, τ = 0.3 t_age
3     constant      1                             constant star formation
4     rising        exp(+x / 0.3)                 rising, e-folding 0.3 t_age
====  ============  ============================  ===========================================

They play the role of the NMF bases of Tojeiro et al. (2009) / Hahn et al. (2023)
used by the paper (not redistributable here): an early-formed, a declining, a
constant and a rising history, whose convex combinations span quiescent to
starbursting galaxies.  All have closed-form cumulative distributions, so the
mass formed in any age bin is computed exactly.

The weights β come from κ ∈ [0, 1]³ by the stick-breaking transform of
Betancourt (2012) (also Leja et al. 2017, Li et al. 2023 Appendix A), which maps
uniform κ to a uniform Dirichlet(1, 1, 1, 1):

β₁ = 1 − κ₁^{1/3},  β₂ = (1 − β₁)(1 − κ₂^{1/2}),  β₃ = (1 − β₁ − β₂)(1 − κ₃),  β₄ = 1 − β₁ − β₂ − β₃.
"""
from __future__ import annotations

import math

import torch

from engine.sps.params import SFH_BASIS_NAMES

#: Shape constants of the bases (fractions of t_age).
EARLY_SCALE = 0.1
DECLINE_SCALE = 0.3
RISE_SCALE = 0.3

#: Names of the bases, in the order of β (one list for the whole project: :mod:`engine.sps.params`).
BASIS_NAMES: tuple[str, ...] = SFH_BASIS_NAMES


def stick_breaking(kappa: torch.Tensor) -> torch.Tensor:
    """Map κ ∈ [0,1]³ to Dirichlet weights β (…, 4) (Betancourt 2012).

    Uniform κ gives β uniformly distributed on the 3-simplex.
    """
    k1, k2, k3 = kappa.unbind(-1)
    b1 = 1.0 - k1.clamp(min=0.0) ** (1.0 / 3.0)
    rem = 1.0 - b1
    b2 = rem * (1.0 - k2.clamp(min=0.0).sqrt())
    rem = rem - b2
    b3 = rem * (1.0 - k3)
    b4 = rem - b3
    return torch.stack([b1, b2, b3, b4], dim=-1)


def basis_cdf(x: torch.Tensor) -> torch.Tensor:
    """Cumulative distributions Pᵢ(x) of the four bases, shape (…, 4), x ∈ [0, 1]."""
    a, b, c = EARLY_SCALE, DECLINE_SCALE, RISE_SCALE
    n1 = 1.0 - math.exp(-1.0 / a) * (1.0 + 1.0 / a)
    p1 = (1.0 - torch.exp(-x / a) * (1.0 + x / a)) / n1
    p2 = (1.0 - torch.exp(-x / b)) / (1.0 - math.exp(-1.0 / b))
    p3 = x
    p4 = (torch.exp((x - 1.0) / c) - math.exp(-1.0 / c)) / (1.0 - math.exp(-1.0 / c))
    return torch.stack([p1, p2, p3, p4], dim=-1)


def basis_pdf(x: torch.Tensor) -> torch.Tensor:
    """Densities pᵢ(x) of the four bases, shape (…, 4); zero outside [0, 1]."""
    a, b, c = EARLY_SCALE, DECLINE_SCALE, RISE_SCALE
    n1 = 1.0 - math.exp(-1.0 / a) * (1.0 + 1.0 / a)
    p1 = x / a**2 * torch.exp(-x / a) / n1
    p2 = torch.exp(-x / b) / b / (1.0 - math.exp(-1.0 / b))
    p3 = torch.ones_like(x)
    p4 = torch.exp((x - 1.0) / c) / c / (1.0 - math.exp(-1.0 / c))
    inside = ((x >= 0) & (x <= 1)).to(x.dtype)
    return torch.stack([p1, p2, p3, p4], dim=-1) * inside.unsqueeze(-1)


def smooth_mass_fraction_within(
    t_gyr: torch.Tensor, t_age_gyr: torch.Tensor, beta: torch.Tensor
) -> torch.Tensor:
    """Fraction of the smooth component's mass formed at lookback times < t.

    Parameters
    ----------
    t_gyr : Tensor (N, T) or (T,)
        Lookback times [Gyr].
    t_age_gyr : Tensor (N,)
        Age of the Universe at each galaxy's redshift [Gyr].
    beta : Tensor (N, 4)
        Basis weights.

    Returns
    -------
    Tensor (N, T)
        G(t) = Σᵢ βᵢ [1 − Pᵢ(1 − t/t_age)], clipped to [0, 1].
    """
    u = (t_gyr / t_age_gyr.unsqueeze(-1)).clamp(0.0, 1.0)
    g = 1.0 - basis_cdf(1.0 - u)  # (N, T, 4)
    return (g * beta.unsqueeze(-2)).sum(-1)


def burst_active(t_burst: torch.Tensor, t_age_gyr: torch.Tensor) -> torch.Tensor:
    """1 where the burst happened after the Big Bang (t_burst < t_age(z)), else 0."""
    return (t_burst < t_age_gyr).to(t_burst.dtype)


def smooth_bin_weights(
    beta: torch.Tensor, t_age_gyr: torch.Tensor, age_edges_gyr: torch.Tensor
) -> torch.Tensor:
    """Fraction of the smooth component's mass in each SSP age bin, shape (N, A); rows sum to 1.

    Integrated exactly over each bin from the closed-form CDFs; bins older than the
    Universe at z get zero.
    """
    g = smooth_mass_fraction_within(age_edges_gyr, t_age_gyr, beta)  # (N, A+1)
    smooth = (g[:, 1:] - g[:, :-1]).clamp(min=0.0)
    return smooth / smooth.sum(-1, keepdim=True).clamp(min=1e-30)


def basis_bin_weights(t_age_gyr: torch.Tensor, age_edges_gyr: torch.Tensor) -> torch.Tensor:
    """Fraction of each pure basis's mass in each SSP age bin, shape (N, 4, A); rows sum to 1.

    ``smooth_bin_weights(β, …) = Σᵢ βᵢ basis_bin_weights(…)[:, i]`` (each basis integrates to one over
    [0, t_age]), computed from one evaluation of the four CDFs.
    """
    u = (age_edges_gyr / t_age_gyr.unsqueeze(-1)).clamp(0.0, 1.0)  # (N, A+1)
    g = 1.0 - basis_cdf(1.0 - u)  # (N, A+1, 4)
    w = (g[:, 1:] - g[:, :-1]).clamp(min=0.0)
    w = w / w.sum(1, keepdim=True).clamp(min=1e-30)
    return w.transpose(1, 2)


def burst_interpolation(
    t_burst: torch.Tensor, ssp_log_ages: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Bracketing single-age SSP index k and weight a of ``t_burst`` [Gyr], linear in log age.

    The burst spectrum is (1 − a) S_k + a S_{k+1}; ``ssp_log_ages`` are log10(age/yr),
    increasing.  Differentiable in ``t_burst`` through a.
    """
    lt = torch.log10(t_burst * 1e9).clamp(float(ssp_log_ages[0]), float(ssp_log_ages[-1]))
    k = (torch.searchsorted(ssp_log_ages, lt.detach().contiguous(), right=True) - 1).clamp(
        0, len(ssp_log_ages) - 2
    )
    a = ((lt - ssp_log_ages[k]) / (ssp_log_ages[k + 1] - ssp_log_ages[k])).clamp(0.0, 1.0)
    return k, a


def sfr_at(t_gyr: torch.Tensor, m_formed: torch.Tensor, beta: torch.Tensor, f_burst: torch.Tensor,
           t_burst: torch.Tensor, t_age_gyr: torch.Tensor) -> torch.Tensor:
    """Star-formation rate of the smooth component [M☉/yr] at lookback times ``t_gyr``.

    Zero at lookback times beyond the age of the Universe.  The burst, a δ function,
    is not included (see :func:`burst_active` and ``f_burst``).
    """
    f_eff = f_burst * burst_active(t_burst, t_age_gyr)
    x = 1.0 - t_gyr / t_age_gyr.unsqueeze(-1)
    dens = (basis_pdf(x) * beta.unsqueeze(-2)).sum(-1)  # per unit x
    return (m_formed * (1.0 - f_eff) / (t_age_gyr * 1e9)).unsqueeze(-1) * dens


def mean_sfr(timescale_gyr: float, m_formed: torch.Tensor, beta: torch.Tensor, f_burst: torch.Tensor,
             t_burst: torch.Tensor, t_age_gyr: torch.Tensor) -> torch.Tensor:
    """Mass formed in the last ``timescale_gyr`` divided by that time [M☉/yr] (burst included)."""
    f_eff = f_burst * burst_active(t_burst, t_age_gyr)
    t = torch.full_like(t_age_gyr, timescale_gyr).unsqueeze(-1)
    g = smooth_mass_fraction_within(t, t_age_gyr, beta).squeeze(-1)
    in_burst = (t_burst < timescale_gyr).to(g.dtype)
    frac = (1.0 - f_eff) * g + f_eff * in_burst
    return m_formed * frac / (timescale_gyr * 1e9)
