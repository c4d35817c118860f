"""Dust attenuation: Calzetti (2000) with a variable slope and UV bump, plus birth clouds.

Diffuse ISM (all stars), in the form of Noll et al. (2009) / Kriek & Conroy (2013)::

    τ_ISM(λ) = τ₂ · [k_C00(λ) + D(λ; E_b)] / R_V · (λ / 5500 Å)^n_dust,   R_V = 4.05

with the Calzetti et al. (2000, Eq. 4) curve k_C00, extended below 1200 Å by the
power law (λ/1200 Å)^−0.77 and set to zero where it crosses zero near 3.1 µm (as in
bagpipes), and a Drude UV bump D(λ) = E_b (λ Δλ)² / [(λ² − λ₀²)² + (λ Δλ)²],
λ₀ = 2175 Å, Δλ = 350 Å, whose strength is tied to the slope as in Kriek & Conroy
(2013): E_b = 0.85 − 1.9 n_dust, floored at 0 (a negative bump would be an emission
feature).  ``uv_bump=False`` gives the pure Calzetti shape (for comparisons with
codes that have no bump).

Birth clouds (Charlot & Fall 2000): stars younger than 10 Myr are also attenuated by
τ_BC(λ) = τ₁ (λ / 5500 Å)^−1.

Attenuated L_ν = L_ν · exp(−τ).  Everything is torch and differentiable in τ₁, τ₂, n.
"""
from __future__ import annotations

import numpy as np
import torch

R_V_CALZETTI = 4.05
BUMP_LAMBDA0 = 2175.0
BUMP_WIDTH = 350.0
LAMBDA_V = 5500.0


def calzetti_k(wave_aa):
    """Calzetti et al. (2000) k(λ) = A(λ)/E(B−V), R_V = 4.05 (their Eq. 4).

    0.12–0.63 µm: 2.659 (−2.156 + 1.509/λ − 0.198/λ² + 0.011/λ³) + R_V;
    0.63–2.2 µm (continued to its zero near 3.1 µm): 2.659 (−1.857 + 1.040/λ) + R_V;
    below 0.12 µm: k(0.12 µm) (λ/0.12 µm)^−0.77.  λ in µm.

    ``wave_aa`` [Å] may be a numpy array (float64 result) or a torch tensor (same dtype and
    device, differentiable), so tabulated curves and per-galaxy wavelengths share one formula.
    """
    k12 = 2.659 * (-2.156 + 1.509 / 0.12 - 0.198 / 0.12**2 + 0.011 / 0.12**3) + R_V_CALZETTI
    if isinstance(wave_aa, torch.Tensor):
        x = 1e4 / wave_aa  # 1/λ [µm⁻¹]; the polynomials in Horner form (fewer passes over per-galaxy arrays)
        k_blue = ((0.011 * 2.659 * x - 0.198 * 2.659) * x + 1.509 * 2.659) * x + (
            R_V_CALZETTI - 2.156 * 2.659
        )
        k_red = (1.040 * 2.659) * x + (R_V_CALZETTI - 1.857 * 2.659)
        k = torch.where(x > 1 / 0.12, k12 * (0.12 * x) ** 0.77, torch.where(x > 1 / 0.63, k_blue, k_red))
        return k.clamp(min=0.0)
    lam = np.asarray(wave_aa, dtype=np.float64) * 1e-4
    k = np.zeros_like(lam)
    blue = lam < 0.63
    k[blue] = (
        2.659 * (-2.156 + 1.509 / lam[blue] - 0.198 / lam[blue] ** 2 + 0.011 / lam[blue] ** 3) + R_V_CALZETTI
    )
    red = ~blue
    k[red] = 2.659 * (-1.857 + 1.040 / lam[red]) + R_V_CALZETTI
    uv = lam < 0.12
    k[uv] = k12 * (lam[uv] / 0.12) ** -0.77
    return np.clip(k, 0.0, None)


def drude_profile(wave_aa):
    """Drude profile of unit amplitude, centred at 2175 Å with FWHM 350 Å (Noll et al. 2009).

    numpy array or torch tensor in, the same out."""
    lam = wave_aa if isinstance(wave_aa, torch.Tensor) else np.asarray(wave_aa, dtype=np.float64)
    lw2 = (lam * BUMP_WIDTH) ** 2
    return lw2 / ((lam * lam - BUMP_LAMBDA0**2) ** 2 + lw2)


def tau_ism_at(
    wave_aa: torch.Tensor, tau2: torch.Tensor, n_dust: torch.Tensor, uv_bump: bool = True
) -> torch.Tensor:
    """Diffuse optical depth τ_ISM at arbitrary (e.g. per-galaxy rest-frame) wavelengths [Å].

    All arguments broadcast against each other; the formula is that of the module docstring and
    of :meth:`DustCurves.tau_ism` (which tabulates it on a fixed grid).
    """
    return tau_ism_from_factors(tau2, n_dust, calzetti_k(wave_aa) / R_V_CALZETTI,
                                drude_profile(wave_aa) / R_V_CALZETTI, torch.log(wave_aa / LAMBDA_V), uv_bump)


def tau_ism_from_factors(
    tau2: torch.Tensor,
    n_dust: torch.Tensor,
    k_over_rv: torch.Tensor,
    drude_over_rv: torch.Tensor,
    ln_ratio: torch.Tensor,
    uv_bump: bool = True,
) -> torch.Tensor:
    """τ_ISM = τ2 [k(λ)/R_V + E_b(n) D(λ)/R_V] exp(n ln(λ/λ_V)) from the curve's factors at λ.

    The curve is described in the module docstring.

    The one formula behind :func:`tau_ism_at` (factors at arbitrary wavelengths), :meth:`DustCurves.tau_ism`
    (factors on a fixed grid) and the emulator (factors interpolated in z); all arguments broadcast.
    exp(n ln(λ/λ_V)) rather than a tensor power: its backward reuses the logarithm."""
    shape = torch.addcmul(k_over_rv, bump_strength(n_dust), drude_over_rv) if uv_bump else k_over_rv
    return tau2 * shape * torch.exp(n_dust * ln_ratio)


def bump_strength(n_dust: torch.Tensor) -> torch.Tensor:
    """UV-bump amplitude E_b = 0.85 − 1.9 n (Kriek & Conroy 2013), floored at 0."""
    return (0.85 - 1.9 * n_dust).clamp(min=0.0)


class DustCurves:
    """Dust curves pre-tabulated on a wavelength grid; the per-galaxy optical depths are cheap.

    Parameters
    ----------
    wave_aa : array (L,)
        Rest-frame wavelengths [Å].
    uv_bump : bool
        Include the Kriek & Conroy (2013) bump tied to the slope.
    """

    def __init__(self, wave_aa: np.ndarray, device: torch.device, dtype: torch.dtype, uv_bump: bool = True):
        self.uv_bump = uv_bump
        self.k_over_rv = torch.as_tensor(calzetti_k(wave_aa) / R_V_CALZETTI, device=device, dtype=dtype)
        self.drude_over_rv = torch.as_tensor(
            drude_profile(wave_aa) / R_V_CALZETTI, device=device, dtype=dtype
        )
        self.ln_ratio = torch.as_tensor(np.log(np.asarray(wave_aa) / LAMBDA_V), device=device, dtype=dtype)

    def tau_ism(self, tau2: torch.Tensor, n_dust: torch.Tensor) -> torch.Tensor:
        """Diffuse optical depth τ_ISM(λ), shape (N, L)."""
        return tau_ism_from_factors(
            tau2.unsqueeze(1),
            n_dust.unsqueeze(1),
            self.k_over_rv,
            self.drude_over_rv,
            self.ln_ratio,
            self.uv_bump,
        )

    def tau_birth_cloud(self, tau1: torch.Tensor) -> torch.Tensor:
        """Birth-cloud optical depth τ_BC(λ) = τ₁ (λ/5500 Å)^−1, shape (N, L)."""
        return tau1.unsqueeze(1) * torch.exp(-self.ln_ratio).unsqueeze(0)
