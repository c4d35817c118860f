"""Nebular emission inside :class:`~engine.sps.model.SPSModel`: continuum, lines and their photometry.

With ``SPSModel(..., nebular=True)`` θ gains a trailing column ``log_u`` (log10 of the ionisation
parameter U, range :data:`LOG_U_BOUNDS`), so ``param_names`` ends with ``"log_u"``; the default
model keeps its 11 columns.  Appending the column leaves every existing index of θ, and every
existing θ tensor of the project, valid.  As in bagpipes (Carnall et al. 2018), stars younger than
the birth-cloud age of 10 Myr

* lose all their light below 912 Å (every ionising photon is absorbed: no escape fraction) and
* power the Cloudy nebular continuum and lines of :mod:`engine.sps.nebular` (linear in Z and in
  log U, per M☉ formed in each young age bin),

and the continuum and lines are attenuated like those stars, by the birth clouds (τ₁) and the
diffuse ISM (τ₂, n) of :mod:`engine.sps.dust`.  The continuum joins the young stellar spectrum on
the binned grid.  A line of luminosity L at rest wavelength λ_l is a δ function: its band average
(the quantity ``SPSModel._observe`` returns, in units of 1e20 erg s⁻¹ Hz⁻¹) is

    L λ_l / c · R_b(λ_l (1 + z)) / ∫ R_b d ln λ,

with the response R_b interpolated linearly in ln λ on a fine grid (:class:`LineResponse`), so band
fluxes are continuous and differentiable in z as a line crosses a filter edge.  Lines below Lyman-α
take the IGM transmission just blueward of their wavelength when IGM absorption is on (bagpipes
gives its Lyman-α pixel the transmission of the pixel blueward of it).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from engine.sps.cosmology import CosmologyTable
from engine.sps.dust import LAMBDA_V, DustCurves, tau_ism_at
from engine.sps.igm import LYMAN_ALPHA, igm_tau, lyman_series_coefficients
from engine.sps.nebular import (
    NebularGrid,
    bracket_contract,
    load_nebular_grid,
    log_u_nodes,
)
from engine.sps.photometry import MPC_CM, Filter, response_norm
from engine.sps.ssp import C_AA_S, L_SUN_ERG_S, LNU_UNIT

#: Range of θ's ``log_u`` column.
LOG_U_BOUNDS: tuple[float, float] = (-4.0, -1.0)
#: Name of that column.
LOG_U_NAME = "log_u"
#: Ionising photons: below this rest wavelength [Å] young stars emit nothing when nebular emission is on.
LYMAN_LIMIT_AA = 911.8
#: Step in ln λ of the fine grid on which line responses are interpolated.
LINE_RESPONSE_STEP = 1e-4
#: Lyman-series lines take the IGM transmission at λ (1 − this), just blueward of the line.
_BLUEWARD = 1e-6


class LineResponse:
    """Normalised band responses R_b(λ_k (1 + z)) / ∫ R_b d ln λ of lines λ_k, tabulated on a fine grid
    uniform in ln(1 + z) (step :data:`LINE_RESPONSE_STEP`) and interpolated linearly in it, i.e. linearly
    in ln λ at every line; one contiguous row (K × B) per grid redshift makes the per-galaxy look-up cheap.

    Parameters
    ----------
    filters : sequence of Filter
    line_wave : ndarray (K,)
        Rest-frame line wavelengths [Å].
    z_max : float
        Largest redshift tabulated (beyond it the last row is used).
    """

    def __init__(self, filters: Sequence[Filter], line_wave: np.ndarray, z_max: float, device: torch.device,
                 dtype: torch.dtype):
        self.n = math.ceil(math.log1p(z_max) / LINE_RESPONSE_STEP) + 2
        # (n, K)
        lam = np.asarray(line_wave)[None, :] * np.exp(LINE_RESPONSE_STEP * np.arange(self.n))[:, None]
        tab = np.stack([np.interp(lam, f.wave, f.response, left=0.0, right=0.0) / response_norm(f)
                        for f in filters], -1)
        self.shape = tab.shape[1:]
        self.table = torch.as_tensor(tab.reshape(self.n, -1), device=device, dtype=dtype)  # (n, K·B)

    def at(self, z: torch.Tensor) -> torch.Tensor:
        """Responses of every line and band for galaxies at redshifts ``z`` (N,): (N, K, B)."""
        s = torch.log1p(z) / LINE_RESPONSE_STEP
        i0 = s.detach().floor().clamp(0, self.n - 2)
        a = (s - i0).unsqueeze(-1)
        i = i0.long()
        lo = self.table.index_select(0, i)
        hi = self.table.index_select(0, i + 1)
        return (lo + a * (hi - lo)).reshape(z.shape[0], *self.shape)


def ionising_cut(wave: np.ndarray, dlnlam: float) -> np.ndarray:
    """Fraction of each log-λ bin (centres ``wave``) redward of the Lyman limit: 0 below, 1 above."""
    return np.clip((np.log(wave / LYMAN_LIMIT_AA)) / dlnlam + 0.5, 0.0, 1.0)


class NebularComponent:
    """The nebular continuum and lines of a model's galaxies, on its wavelength window and full grid.

    Parameters
    ----------
    wave : ndarray (L,)
        The SSP grid's bin centres [Å]; ``dlnlam`` its step in ln λ.
    age_edges : ndarray
        The young age-bin edges [yr] (0 … 10 Myr).
    win : slice
        The model's rest-frame photometric window within the grid.
    filters : sequence of Filter
        The model's bands; ``z_max`` its largest redshift.
    uv_bump : bool
        The model's dust-curve option.
    """

    def __init__(self, wave: np.ndarray, dlnlam: float, age_edges: np.ndarray, win: slice,
                 filters: Sequence[Filter], z_max: float, uv_bump: bool, device: torch.device,
                 dtype: torch.dtype, grid: NebularGrid | None = None):
        edges = wave[0] * math.exp(-0.5 * dlnlam) * np.exp(dlnlam * np.arange(len(wave) + 1))
        self.grid = grid if grid is not None else load_nebular_grid(age_edges, edges)
        g = self.grid
        self.device, self.dtype, self.uv_bump = device, dtype, uv_bump

        def t(x):
            return torch.as_tensor(np.ascontiguousarray(x), device=device, dtype=dtype)

        nz, nu, na = g.lines.shape[:3]
        self.log_u_grid = t(g.log_u)
        cont = g.cont.transpose(1, 0, 2, 3).reshape(nu, nz * na, -1)  # (U, Z·A, L)
        self.cont_full = t(cont)
        self.cont_win = t(cont[:, :, win])
        self.lines_all = t(g.lines.transpose(1, 0, 2, 3).reshape(nu, nz * na, -1))  # (U, Z·A, K) [L☉]
        self.line_wave_all = t(g.line_wave)
        lo = min(f.support[0] for f in filters) / (1.0 + z_max)
        hi = max(f.support[1] for f in filters)
        self.phot_idx = torch.as_tensor(np.nonzero((g.line_wave >= lo) & (g.line_wave <= hi))[0],
                                        device=device)
        lam = g.line_wave[self.phot_idx.cpu().numpy()]
        # L☉ per M☉ → band units (1e20 erg/s/Hz): L λ / c
        self.lines_phot = (self.lines_all.index_select(2, self.phot_idx)
                           * t(L_SUN_ERG_S * lam / C_AA_S / LNU_UNIT))
        self.phot_wave = t(lam)
        self.phot_dust = DustCurves(lam, device, dtype, uv_bump=uv_bump)
        self.lyman = torch.nonzero(self.phot_wave < LYMAN_ALPHA + 1e-3).squeeze(1)
        self.response = LineResponse(filters, lam, z_max, device, dtype)
        self.igm_coefs = t(lyman_series_coefficients())
        self.cut_full = t(ionising_cut(wave, dlnlam))
        self.cut_win = t(ionising_cut(wave[win], dlnlam))

    @staticmethod
    def young_weights(comp: dict[str, torch.Tensor], n_young: int) -> torch.Tensor:
        """Mass fractions formed in each (metallicity node, young age bin), (N, Z·A)."""
        w = comp["w_z"].unsqueeze(2) * comp["w_age"][:, :n_young].unsqueeze(1)
        return w.reshape(w.shape[0], -1)

    def continuum(self, w_young: torch.Tensor, log_u: torch.Tensor, full: bool = False) -> torch.Tensor:
        """Unattenuated nebular L_ν per M☉ formed [1e20 erg/s/Hz], (N, W) on the window or (N, L) on the
        full grid."""
        k, a = log_u_nodes(log_u, self.log_u_grid)
        return bracket_contract(w_young, k, a, self.cont_full if full else self.cont_win)

    def _line_attenuation(self, comp: dict[str, torch.Tensor], wave: torch.Tensor,
                          curves: DustCurves | None = None) -> torch.Tensor:
        """exp(−τ_BC − τ_ISM) at the rest wavelengths ``wave`` (K,), (N, K); ``curves`` tabulated there if
        given."""
        if curves is not None:
            tau = curves.tau_ism(comp["tau2"], comp["n_dust"]) + curves.tau_birth_cloud(comp["tau1"])
            return torch.exp(-tau)
        tau = tau_ism_at(wave.unsqueeze(0), comp["tau2"].unsqueeze(1), comp["n_dust"].unsqueeze(1),
                         self.uv_bump)
        return torch.exp(-tau - comp["tau1"].unsqueeze(1) * (LAMBDA_V / wave))

    def line_bands(self, comp: dict[str, torch.Tensor], w_young: torch.Tensor, igm: bool) -> torch.Tensor:
        """Band averages of the attenuated lines per M☉ formed, in the units of ``SPSModel._observe``,
        (N, B)."""
        k, a = log_u_nodes(comp["log_u"], self.log_u_grid)
        lum = (bracket_contract(w_young, k, a, self.lines_phot)
               * self._line_attenuation(comp, self.phot_wave, self.phot_dust))
        ln_zp1 = torch.log1p(comp["z"]).unsqueeze(1)
        if igm and self.lyman.numel():
            lam_obs = self.phot_wave[self.lyman] * (1.0 - _BLUEWARD) * torch.exp(ln_zp1)
            trans = torch.exp(-igm_tau(lam_obs, comp["z"].unsqueeze(1), self.igm_coefs))
            lum = lum.index_copy(1, self.lyman, lum.index_select(1, self.lyman) * trans)
        resp = self.response.at(comp["z"])  # (N, K, B)
        return torch.einsum("nk,nkb->nb", lum, resp)

    def line_luminosities(self, comp: dict[str, torch.Tensor], w_young: torch.Tensor,
                          groups: list[list[int]]) -> torch.Tensor:
        """Dust-attenuated luminosities per M☉ formed [erg/s] of each group of lines (summed), (N, G)."""
        flat = sorted({i for grp in groups for i in grp})
        idx = torch.as_tensor(flat, device=self.device)
        k, a = log_u_nodes(comp["log_u"], self.log_u_grid)
        lum = bracket_contract(w_young, k, a, self.lines_all.index_select(2, idx))
        lum = lum * self._line_attenuation(comp, self.line_wave_all.index_select(0, idx)) * L_SUN_ERG_S
        pos = {i: j for j, i in enumerate(flat)}
        return torch.stack([sum(lum[:, pos[i]] for i in grp) for grp in groups], dim=1)

    def line_fluxes(self, comp: dict[str, torch.Tensor], n_young: int, groups: list[list[int]],
                    cosmo: CosmologyTable) -> torch.Tensor:
        """Dust-attenuated fluxes [erg s⁻¹ cm⁻²] of each group of lines, (N, G): the luminosities of
        :meth:`line_luminosities` times the formed mass over 4π D_L² (in logs: float32-safe)."""
        lum = self.line_luminosities(comp, self.young_weights(comp, n_young), groups)
        ln_d_cm = torch.log(cosmo.luminosity_distance_mpc(comp["z"])) + math.log(MPC_CM)
        ln_scale = math.log(10.0) * comp["log_mformed"] - math.log(4.0 * math.pi) - 2.0 * ln_d_cm
        return lum * torch.exp(ln_scale).unsqueeze(1)

    def binned_lines(self, comp: dict[str, torch.Tensor], w_young: torch.Tensor, wave: torch.Tensor,
                     dlnlam: float) -> torch.Tensor:
        """The unattenuated lines as L_ν [1e20 erg/s/Hz per M☉ formed] spread over the log-λ bins (centres
        ``wave``) that hold them, (N, L): a line of luminosity L in a bin of width Δ ln λ centred at λ
        adds L λ / (c Δ)."""
        k, a = log_u_nodes(comp["log_u"], self.log_u_grid)
        lum = bracket_contract(w_young, k, a, self.lines_all)  # (N, K) L☉
        x = (torch.log(self.line_wave_all) - torch.log(wave[0])) / dlnlam + 0.5
        inside = (x >= 0) & (x < wave.shape[0])
        col = x.floor().long().clamp(0, wave.shape[0] - 1)[inside]
        scale = L_SUN_ERG_S * wave[col] / (C_AA_S * dlnlam * LNU_UNIT)
        out = lum.new_zeros((lum.shape[0], wave.shape[0]))
        return out.index_add(1, col, lum[:, inside] * scale)
