"""The differentiable, batched stellar population synthesis model (:class:`SPSModel`).

θ (see :mod:`engine.sps.params`) → rest-frame L_ν → AB fluxes, in torch, batched over
galaxies with no per-galaxy Python loop::

    L_ν(λ) = M_formed · exp(−τ_ISM(λ)) · Σ_Z w_Z [ Σ_{a ≥ 10 Myr} m_a S_{Z,a}(λ)
                                                   + exp(−τ_BC(λ)) Σ_{a < 10 Myr} m_a S_{Z,a}(λ) ]

m_a: fraction of the formed mass in SSP age bin a (:func:`engine.sps.sfh.age_bin_weights`);
w_Z: linear-in-Z interpolation weights between the two bracketing BC03 metallicities
(as bagpipes, Carnall et al. 2018); S: the binned BC03/MILES SSPs (:mod:`engine.sps.ssp`);
τ: :mod:`engine.sps.dust`.  Shapes: N galaxies, n_Z metallicities, K =
:data:`engine.sps.params.N_SFH_BASES` SFH bases, A age bins, B bands.  The surviving mass is
M_formed Σ_{Z,a} w_Z m_a f_live(Z, a), so θ's ``log_mstar`` (surviving, as catalogs quote) fixes M_formed
exactly.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from engine.device import resolve_device
from engine.sps import sfh as sfh_mod
from engine.sps.cosmology import CosmologyTable
from engine.sps.dust import DustCurves
from engine.sps.emission import LOG_U_BOUNDS, LOG_U_NAME, NebularComponent
from engine.sps.igm import IGMWindow
from engine.sps.params import (
    DEFAULT_Z_MAX,
    IDX,
    KAPPA_SLICE,
    PARAM_NAMES,
    param_bounds,
    prepare_theta,
    validate_theta,
)
from engine.sps.photometry import (
    MPC_CM,
    NANOMAGGY_CGS,
    Filter,
    bin_average_response,
    load_filter,
    response_norm,
)
from engine.sps.ssp import LNU_UNIT, SSPGrid, load_ssp_grid

#: Names of the derived quantities returned by :meth:`SPSModel.derived`.
DERIVED_NAMES: tuple[str, ...] = (
    "log_sfr_10myr",
    "log_sfr_100myr",
    "log_ssfr_100myr",
    "log_mformed",
    "mwage_gyr",
)

#: ln of the constant turning (1e20 erg/s/Hz) / (4π Mpc²) into nanomaggies.
_LN_FLUX_CONST = math.log(LNU_UNIT / (4.0 * math.pi * MPC_CM**2) / NANOMAGGY_CGS)

#: sSFR floor [1/yr] added to SFRs before taking logs (keeps log SFR finite when no star forms).
SSFR_FLOOR = 1e-15


def metallicity_nodes(log_zmet: torch.Tensor, zmet_grid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Linear-in-Z interpolation between grid metallicities (as bagpipes): the lower node index k (N,) and
    the weight a of node k+1 (N,), differentiable in ``log_zmet``.  Metallicities beyond the grid are
    clamped to its ends."""
    n_z = zmet_grid.shape[0]
    zl = torch.pow(10.0, log_zmet).clamp(float(zmet_grid[0]), float(zmet_grid[-1]))
    k = (torch.searchsorted(zmet_grid, zl.detach().contiguous(), right=True) - 1).clamp(0, n_z - 2)
    return k, (zl - zmet_grid[k]) / (zmet_grid[k + 1] - zmet_grid[k])


def metallicity_weights(
    log_zmet: torch.Tensor, zmet_grid: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`metallicity_nodes` k and a, plus the dense node weights (N, n_Z) (zero except 1−a at k and a
    at k+1)."""
    k, a = metallicity_nodes(log_zmet, zmet_grid)
    w = torch.zeros(a.shape[0], zmet_grid.shape[0], device=a.device, dtype=a.dtype)
    w = w.scatter_add(1, k.unsqueeze(1), (1.0 - a).unsqueeze(1))
    return k, a, w.scatter_add(1, (k + 1).unsqueeze(1), a.unsqueeze(1))


def component_survival(
    w_basis: torch.Tensor,
    live_frac: torch.Tensor,
    t_burst: torch.Tensor,
    ssp_log_ages: torch.Tensor,
    ssp_live: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Surviving mass per M☉ formed of each pure basis (N, n_Z, K) and of a burst of age t_burst (N, n_Z).

    ``w_basis`` from :func:`engine.sps.sfh.basis_bin_weights`; ``live_frac`` (n_Z, A) of the age bins;
    ``ssp_live`` (n_Z, S) of the single-age SSPs at ``ssp_log_ages`` (S,), interpolated as the burst
    spectrum is.
    """
    s_basis = torch.einsum("nia,ka->nki", w_basis, live_frac)
    return s_basis, burst_survival(t_burst, ssp_log_ages, ssp_live)


def burst_survival(t_burst: torch.Tensor, ssp_log_ages: torch.Tensor, ssp_live: torch.Tensor) -> torch.Tensor:
    """Surviving mass per M☉ formed of a burst of age ``t_burst`` [Gyr] at each metallicity node, (N, n_Z):
    ``ssp_live`` (n_Z, S) interpolated linearly in log age, as the burst spectrum is."""
    kb, ab = sfh_mod.burst_interpolation(t_burst, ssp_log_ages)
    return (1.0 - ab)[:, None] * ssp_live[:, kb].T + ab[:, None] * ssp_live[:, kb + 1].T


def ln_flux_scale(z: torch.Tensor, cosmo: CosmologyTable) -> torch.Tensor:
    """ln of the factor turning a band luminosity per M☉ formed (1e20 erg/s/Hz, averaged over the band's
    response in ln λ) into nanomaggies per M☉ formed at redshift z: (1 + z) / (4π D_L²) and unit constants."""
    return ln_flux_scale_at(z, cosmo.luminosity_distance_mpc(z))


def ln_flux_scale_at(z: torch.Tensor, d_l_mpc: torch.Tensor) -> torch.Tensor:
    """:func:`ln_flux_scale` from the luminosity distance D_L [Mpc] at z, when the caller has it."""
    return torch.log1p(z) - 2.0 * torch.log(d_l_mpc) + _LN_FLUX_CONST


class SPSModel:
    """Differentiable SPS forward model for a set of bands.

    Parameters
    ----------
    bands : sequence of str
        speclite filter names (e.g. ``"sdss2010-r"``, ``"galex-nuv"``) or ECSV paths.
    cosmology : astropy.cosmology.FLRW, optional
        Defaults to ``Planck18``.
    device : str or torch.device, optional
        ``None``/``"auto"`` picks CUDA when available.
    dtype : torch.dtype
        Floating-point type of all computations.
    z_max : float
        Upper redshift bound of the model (0.65 by default).
    uv_bump : bool
        Tie a UV bump to the dust slope (Kriek & Conroy 2013); ``False`` gives pure Calzetti shapes.
    batch_size : int
        Galaxies per internal chunk (bounds peak memory; results are concatenated).
    nebular : bool
        Add the nebular continuum and lines of stars younger than 10 Myr (:mod:`engine.sps.emission`);
        θ then has a 12th column ``log_u``.
    igm : bool
        Apply the IGM absorption of Inoue et al. (2014) (:mod:`engine.sps.igm`).

    Attributes
    ----------
    param_names : tuple of str
        Columns of θ.
    bounds : Tensor (D, 2)
        Lower and upper bound of each parameter.
    bands : tuple of str
    derived_names : tuple of str
    """

    param_names: tuple[str, ...] = PARAM_NAMES
    derived_names: tuple[str, ...] = DERIVED_NAMES

    def __init__(
        self,
        bands: Sequence[str] | str,
        cosmology=None,
        device=None,
        dtype: torch.dtype = torch.float32,
        z_max: float = DEFAULT_Z_MAX,
        uv_bump: bool = True,
        batch_size: int = 8192,
        ssp: SSPGrid | None = None,
        nebular: bool = False,
        igm: bool = False,
    ):
        if isinstance(bands, str):
            bands = [b.strip() for b in bands.split(",") if b.strip()]
        bands = list(bands)
        if not bands:
            raise ValueError("SPSModel needs at least one band")
        if len(set(bands)) != len(bands):
            dup = sorted({b for b in bands if bands.count(b) > 1})
            raise ValueError(f"band(s) given twice: {', '.join(dup)}")
        self.device = resolve_device(device)
        self.dtype = dtype
        self.z_max = float(z_max)
        self.batch_size = int(batch_size)
        self.uv_bump = uv_bump
        self.filters: tuple[Filter, ...] = tuple(load_filter(b) for b in bands)
        self.bands: tuple[str, ...] = tuple(f.name for f in self.filters)
        b = param_bounds(self.z_max)
        self.nebular, self.igm = bool(nebular), bool(igm)
        rows = [b[n] for n in PARAM_NAMES] + ([LOG_U_BOUNDS] if self.nebular else [])
        self.param_names = PARAM_NAMES + ((LOG_U_NAME,) if self.nebular else ())
        self.bounds = torch.tensor(rows, device=self.device, dtype=dtype)
        self.cosmo = CosmologyTable(cosmology, z_max=self.z_max, device=self.device, dtype=dtype)
        self.ssp = ssp if ssp is not None else load_ssp_grid()
        self._setup_grid()
        self._setup_photometry()
        self._setup_emission()

    # ------------------------------------------------------------------ set-up
    def _t(self, x) -> torch.Tensor:
        return torch.as_tensor(np.asarray(x), device=self.device, dtype=self.dtype)

    def _setup_grid(self) -> None:
        g = self.ssp
        self.wave = self._t(g.wave)
        self.dlnlam = g.dlnlam
        self.lam_min_edge = float(g.wave[0] * math.exp(-0.5 * g.dlnlam))
        self.age_edges_gyr = self._t(g.age_edges / 1e9)
        self.zmet_grid = self._t(g.zmet)
        self.live_frac = self._t(g.live_frac)  # (Z, A)
        self.n_young = g.n_young
        self.n_z, self.n_age = g.live_frac.shape
        lnu = torch.as_tensor(g.lnu, dtype=self.dtype)  # CPU until windowed
        self._lnu_full = lnu.to(self.device)
        # single-age SSPs older than 1 Myr, for bursts (t_burst >= 10 Myr)
        keep = np.nonzero(g.ssp_ages >= 1e6)[0]
        self.ssp_log_ages = self._t(np.log10(g.ssp_ages[keep]))
        self.n_ssp = len(keep)
        self._ssp_lnu_full = self._t(g.ssp_lnu[:, keep]).reshape(self.n_z * self.n_ssp, -1)
        self.ssp_live = self._t(g.ssp_live_frac[:, keep])  # (Z, S)
        self.dust_full = DustCurves(g.wave, self.device, self.dtype, uv_bump=self.uv_bump)
        # fine lookback grid (fractions of t_age) for mass-weighted ages
        self._u_fine = torch.linspace(0.0, 1.0, 257, device=self.device, dtype=self.dtype)

    def _setup_photometry(self) -> None:
        g = self.ssp
        n_wave = len(g.wave)
        dln = g.dlnlam
        self.max_shift = int(math.floor(math.log1p(self.z_max) / dln)) + 1  # integer shifts 0..max_shift
        j_lo, j_hi = [], []
        for f in self.filters:
            lo, hi = f.support
            jl = int(math.floor(math.log(lo / self.lam_min_edge) / dln))
            jh = int(math.ceil(math.log(hi / self.lam_min_edge) / dln))
            if jl - self.max_shift - 1 < 0:
                raise ValueError(
                    f"band '{f.name}' starts at {lo:.0f} Å, i.e. {lo / (1 + self.z_max):.0f} Å in the rest "
                    "frame at "
                    f"z_max={self.z_max:g}, below the SSP grid's {self.lam_min_edge:.0f} Å"
                )
            if jh >= n_wave:
                raise ValueError(
                    f"band '{f.name}' extends to {hi:.0f} Å, beyond the SSP grid's "
                    f"{g.wave[-1] * math.exp(0.5 * dln):.0f} Å at z=0"
                )
            j_lo.append(jl)
            j_hi.append(jh)
        self._j0, j1 = min(j_lo), max(j_hi) + 1
        self._i0 = self._j0 - self.max_shift - 1  # first rest-frame bin needed
        self._i1 = j1  # one past the last
        win = slice(self._i0, self._i1)
        edges_obs = self.lam_min_edge * np.exp(dln * np.arange(self._j0, j1 + 1))
        resp = np.stack(
            [bin_average_response(f, edges_obs) * dln / response_norm(f) for f in self.filters], axis=1
        )
        self._resp = self._t(resp)  # (J, B)
        self._obs_idx = torch.arange(self._j0 - self._i0, j1 - self._i0, device=self.device)  # (J,)
        self._win = win
        ny = self.n_young
        self._ssp_young_win = self._lnu_full[:, :ny, win].reshape(self.n_z * ny, -1).contiguous()
        self._ssp_old_win = self._lnu_full[:, ny:, win].reshape(self.n_z * (self.n_age - ny), -1).contiguous()
        self._ssp_lnu_win = self._ssp_lnu_full[:, win].contiguous()
        self.dust_win = DustCurves(g.wave[win], self.device, self.dtype, uv_bump=self.uv_bump)

    def _setup_emission(self) -> None:
        """Nebular tables and IGM transmissions (absent when ``nebular`` / ``igm`` are off)."""
        self._nebular = self._igm = None
        if self.nebular:
            g = self.ssp
            self._nebular = NebularComponent(g.wave, g.dlnlam, g.age_edges[:self.n_young + 1], self._win,
                                             self.filters, self.z_max, self.uv_bump, self.device, self.dtype)
            self._ssp_young_win = self._ssp_young_win * self._nebular.cut_win  # ionising photons absorbed
        if self.igm:
            obs = self.lam_min_edge * np.exp(self.dlnlam * (np.arange(self._j0, self._i1) + 0.5))
            self._igm = IGMWindow(obs, self.dlnlam, self.max_shift, self.device, self.dtype)

    # ------------------------------------------------------------------ helpers
    def validate_theta(self, theta: torch.Tensor) -> None:
        """Raise ``ValueError`` naming the parameter if θ has the wrong shape, NaNs or is outside
        ``bounds``."""
        validate_theta(theta, self.bounds, self.param_names)

    def _prep(self, theta) -> torch.Tensor:
        return prepare_theta(theta, self.bounds, self.device, self.dtype, self.param_names)

    def _chunks(self, theta: torch.Tensor):
        for s in range(0, theta.shape[0], self.batch_size):
            yield theta[s:s + self.batch_size]

    def _zmet_interp(self, log_zmet: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return metallicity_weights(log_zmet, self.zmet_grid)

    def _components(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-galaxy ingredients: age of the Universe, β, age-bin and Z weights, formed mass."""
        c = {name: theta[:, i] for name, i in IDX.items()}
        t_age = self.cosmo.age_gyr(c["z"])
        beta = sfh_mod.stick_breaking(theta[:, KAPPA_SLICE])
        f_eff = c["f_burst"] * sfh_mod.burst_active(c["t_burst"], t_age)
        w_age = (1.0 - f_eff).unsqueeze(1) * sfh_mod.smooth_bin_weights(beta, t_age, self.age_edges_gyr)
        kz, az, w_z = self._zmet_interp(c["log_zmet"])
        kb, ab = sfh_mod.burst_interpolation(c["t_burst"], self.ssp_log_ages)
        # the four (metallicity, age) corners of the burst and their weights, as flat SSP indices
        idx = torch.stack([kz * self.n_ssp + kb, kz * self.n_ssp + kb + 1,
                           (kz + 1) * self.n_ssp + kb, (kz + 1) * self.n_ssp + kb + 1], dim=1)
        wb = f_eff.unsqueeze(1) * torch.stack(
            [(1 - az) * (1 - ab), (1 - az) * ab, az * (1 - ab), az * ab], dim=1
        )
        surv = torch.einsum("nz,na,za->n", w_z, w_age, self.live_frac)
        surv = surv + (wb * self.ssp_live.reshape(-1)[idx]).sum(1)
        log_mformed = c["log_mstar"] - torch.log10(surv)
        return dict(c, t_age=t_age, beta=beta, w_age=w_age, w_z=w_z, burst_idx=idx, burst_w=wb,
                    f_eff=f_eff, log_mformed=log_mformed)

    def _lnu_per_mass(self, comp: dict[str, torch.Tensor], ssp_young: torch.Tensor, ssp_old: torch.Tensor,
                      ssp_single: torch.Tensor, dust: DustCurves, full: bool = False) -> torch.Tensor:
        """Attenuated rest-frame L_ν per M☉ formed, in units of 1e20 erg/s/Hz, (N, W).

        The burst (t_burst ≥ 10 Myr, so outside the birth clouds) is added to the old stars; the nebular
        continuum (and on the ``full`` grid the binned lines) to the young ones.
        """
        n = comp["w_age"].shape[0]
        wz = comp["w_z"].unsqueeze(2) * comp["w_age"].unsqueeze(1)  # (N, Z, A)
        ny = self.n_young
        young = wz[:, :, :ny].reshape(n, -1) @ ssp_young
        if self._nebular is not None:
            w_young = wz[:, :, :ny].reshape(n, -1)
            young = young + self._nebular.continuum(w_young, comp["log_u"], full)
            if full:
                young = young + self._nebular.binned_lines(comp, w_young, self.wave, self.dlnlam)
        old = wz[:, :, ny:].reshape(n, -1) @ ssp_old
        idx, wb = comp["burst_idx"], comp["burst_w"]
        for c in range(4):
            old = old + wb[:, c:c + 1] * ssp_single.index_select(0, idx[:, c])
        att_bc = torch.exp(-dust.tau_birth_cloud(comp["tau1"]))
        att_ism = torch.exp(-dust.tau_ism(comp["tau2"], comp["n_dust"]))
        return att_ism * (old + att_bc * young)

    # ------------------------------------------------------------------ public API
    def fluxes(self, theta: torch.Tensor) -> torch.Tensor:
        """AB flux densities [nanomaggies], shape (N, n_bands); differentiable in θ."""
        theta = self._prep(theta)
        if theta.shape[0] == 0:
            return theta.new_zeros((0, len(self.bands)))
        return torch.cat([self._fluxes_chunk(t) for t in self._chunks(theta)], dim=0)

    def _fluxes_chunk(self, theta: torch.Tensor) -> torch.Tensor:
        comp = self._components(theta)
        if self._nebular is not None:
            comp["log_u"] = theta[:, -1]
        lnu = self._lnu_per_mass(comp, self._ssp_young_win, self._ssp_old_win, self._ssp_lnu_win,
                                 self.dust_win)  # (N, W)
        z = comp["z"]
        band = self._observe(lnu, z)  # (N, B): ∫ L_ν R dlnλ / ∫ R dlnλ
        if self._nebular is not None:
            w_young = self._nebular.young_weights(comp, self.n_young)
            band = band + self._nebular.line_bands(comp, w_young, self._igm is not None)
        return band * torch.exp(math.log(10.0) * comp["log_mformed"] + self.ln_flux_scale(z)).unsqueeze(1)

    def ln_flux_scale(self, z: torch.Tensor) -> torch.Tensor:
        """:func:`ln_flux_scale` with this model's cosmology, (N,)."""
        return ln_flux_scale(z, self.cosmo)

    def _observe(self, lnu: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Redshift rest-frame L_ν (N, ..., W) (window grid) by z (N,) and average it over each band's
        response in ln λ: (N, ..., B), in units of 1e20 erg/s/Hz per M☉ formed.  Shifts are linear
        interpolation between whole log-λ bins, so the result is differentiable in z."""
        s = torch.log1p(z) / self.dlnlam
        k = s.detach().floor().long().clamp(0, self.max_shift - 1)
        a = (s - k.to(s.dtype)).unsqueeze(1)
        idx = self._obs_idx.unsqueeze(0) - k.unsqueeze(1)  # (N, J) rest index of each observed bin
        if lnu.ndim > 2:
            lead = lnu.shape[1:-1]
            flat = lnu.reshape(lnu.shape[0], -1, lnu.shape[-1])
            ix = idx.unsqueeze(1).expand(-1, flat.shape[1], -1)
            lo, hi = flat.gather(2, ix), flat.gather(2, ix - 1)
            if self._igm is not None:
                lo, hi = self._igm.apply(lo, hi, k, a)
            shifted = (1.0 - a.unsqueeze(1)) * lo + a.unsqueeze(1) * hi
            return (shifted @ self._resp).reshape(lnu.shape[0], *lead, -1)
        lo, hi = lnu.gather(1, idx), lnu.gather(1, idx - 1)
        if self._igm is not None:
            lo, hi = self._igm.apply(lo, hi, k, a)
        shifted = (1.0 - a) * lo + a * hi
        return shifted @ self._resp

    # ------------------------------------------------------------------ the linear decomposition
    def basis_band_luminosities(self, z: torch.Tensor, tau1: torch.Tensor, tau2: torch.Tensor,
                                n_dust: torch.Tensor) -> torch.Tensor:
        """Band luminosity per M☉ formed of each pure SFH basis at each metallicity node, (N, n_Z, K, B).

        The SPS is linear in everything but redshift and dust: for galaxy θ, with basis weights β
        (stick-breaking of κ), node weights w_Z (linear in Z between grid metallicities) and the effective
        burst fraction f,

            band_b(θ) = Σ_k w_Z,k [ (1 − f) Σ_i β_i L[k, i, b](z, τ1, τ2, n)
                                    + f L_burst[k, b](z, τ2, n, t_burst) ],

        and the surviving mass per M☉ formed is the same combination of :meth:`component_survival`.
        This method gives L (see :meth:`burst_band_luminosities` for L_burst), in the units of
        :meth:`_observe`; the emulator (:mod:`engine.emulator.basis`) learns these functions of three or
        four parameters instead of the full θ.  Inputs are (N,) tensors on the model's device.
        Not available with ``nebular=True`` (the lines would need ``log_u``).
        """
        if self.nebular:
            raise ValueError("basis_band_luminosities is not available for a model with nebular=True")
        out = []
        for s in range(0, z.shape[0], max(1, self.batch_size // 16)):
            sl = slice(s, s + max(1, self.batch_size // 16))
            out.append(self._basis_chunk(z[sl], tau1[sl], tau2[sl], n_dust[sl]))
        return torch.cat(out, 0)

    def _basis_chunk(self, z, tau1, tau2, n_dust) -> torch.Tensor:
        w = sfh_mod.basis_bin_weights(self.cosmo.age_gyr(z), self.age_edges_gyr)  # (N, K, A)
        ny = self.n_young
        young = self._ssp_young_win.reshape(self.n_z, ny, -1)
        old = self._ssp_old_win.reshape(self.n_z, self.n_age - ny, -1)
        att_bc = torch.exp(-self.dust_win.tau_birth_cloud(tau1))[:, None, None, :]
        att_ism = torch.exp(-self.dust_win.tau_ism(tau2, n_dust))[:, None, None, :]
        lnu = torch.einsum("nia,kaw->nkiw", w[:, :, ny:], old) + att_bc * torch.einsum(
            "nia,kaw->nkiw", w[:, :, :ny], young
        )
        return self._observe(att_ism * lnu, z)

    def burst_band_luminosities(self, z: torch.Tensor, tau2: torch.Tensor, n_dust: torch.Tensor,
                                t_burst: torch.Tensor) -> torch.Tensor:
        """Band luminosity per M☉ formed of a burst of age ``t_burst`` [Gyr] at each metallicity node,
        (N, n_Z, B) (see :meth:`basis_band_luminosities`).  Bursts are older than 10 Myr: no birth clouds."""
        kb, ab = sfh_mod.burst_interpolation(t_burst, self.ssp_log_ages)
        ssp = self._ssp_lnu_win.reshape(self.n_z, self.n_ssp, -1)
        lnu = ((1.0 - ab)[:, None, None] * ssp[:, kb].transpose(0, 1)
               + ab[:, None, None] * ssp[:, kb + 1].transpose(0, 1))
        att_ism = torch.exp(-self.dust_win.tau_ism(tau2, n_dust))[:, None, :]
        return self._observe(att_ism * lnu, z)

    def component_survival(self, z: torch.Tensor, t_burst: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Surviving mass per M☉ formed of each pure basis (N, n_Z, K) and of the burst (N, n_Z)."""
        w = sfh_mod.basis_bin_weights(self.cosmo.age_gyr(z), self.age_edges_gyr)
        return component_survival(w, self.live_frac, t_burst, self.ssp_log_ages, self.ssp_live)

    def magnitudes(self, theta: torch.Tensor) -> torch.Tensor:
        """AB magnitudes, shape (N, n_bands).

        Fluxes are floored at the smallest normal float (≈ 117 mag in float32), so that a band
        with zero flux (e.g. the far UV behind τ ≈ 100 of dust) neither returns inf nor poisons the
        gradients of the other bands with NaN.
        """
        f = self.fluxes(theta)
        return 22.5 - 2.5 * torch.log10(f.clamp(min=torch.finfo(f.dtype).tiny))

    def spectrum(self, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rest-frame spectrum: wavelengths [Å] (L,) and L_ν [erg s⁻¹ Hz⁻¹] per galaxy (N, L).

        With ``nebular=True`` it includes the nebular continuum and the lines, each line spread over the
        bin that holds it; no IGM absorption (an observed-frame effect)."""
        theta = self._prep(theta)
        ny = self.n_young
        young = self._lnu_full[:, :ny].reshape(self.n_z * ny, -1)
        if self._nebular is not None:
            young = young * self._nebular.cut_full
        old = self._lnu_full[:, ny:].reshape(self.n_z * (self.n_age - ny), -1)
        out = []
        for t in self._chunks(theta):
            comp = self._components(t)
            if self._nebular is not None:
                comp["log_u"] = t[:, -1]
            lnu = self._lnu_per_mass(comp, young, old, self._ssp_lnu_full, self.dust_full, full=True)
            out.append(lnu * (LNU_UNIT * torch.pow(10.0, comp["log_mformed"])).unsqueeze(1))
        return self.wave, torch.cat(out, dim=0)

    def line_fluxes(self, theta: torch.Tensor, names: Sequence[str]) -> torch.Tensor:
        """Dust-attenuated fluxes [erg s⁻¹ cm⁻²] of emission lines, (N, len(names)); needs ``nebular=True``.

        ``names``: ``"Halpha"``, ``"Hbeta"``, ``"OII3727"`` (the doublet summed), ``"OIII5007"``,
        ``"NII6584"`` … (:data:`engine.sps.nebular.LINE_ALIASES`) or Cloudy names.  No IGM absorption.
        """
        if self._nebular is None:
            raise ValueError("line_fluxes needs a model built with nebular=True")
        groups = self._nebular.grid.line_index(list(names))
        theta = self._prep(theta)
        out = [self._nebular.line_fluxes(dict(self._components(t), log_u=t[:, -1]), self.n_young, groups,
                                         self.cosmo)
               for t in self._chunks(theta)]
        return torch.cat(out, 0) if out else theta.new_zeros((0, len(groups)))

    def sfh(self, theta: torch.Tensor, t_lookback_gyr) -> torch.Tensor:
        """SFR [M☉/yr] of the smooth component at lookback times [Gyr], shape (N, T).

        ``t_lookback_gyr`` is (T,) or (N, T).  The burst (a δ function of mass
        ``f_burst · M_formed`` at ``t_burst``, present when ``t_burst < t_age(z)``) is
        not part of this rate; see :meth:`burst_mass`.
        """
        theta = self._prep(theta)
        t = torch.as_tensor(t_lookback_gyr, device=self.device, dtype=self.dtype)
        if t.ndim == 1:
            t = t.unsqueeze(0).expand(theta.shape[0], -1)
        comp = self._components(theta)
        m_formed = torch.pow(10.0, comp["log_mformed"])
        return sfh_mod.sfr_at(t, m_formed, comp["beta"], comp["f_burst"], comp["t_burst"], comp["t_age"])

    def burst_mass(self, theta: torch.Tensor) -> torch.Tensor:
        """Mass formed in the burst [M☉] (zero when t_burst ≥ t_age(z)), shape (N,)."""
        theta = self._prep(theta)
        comp = self._components(theta)
        active = sfh_mod.burst_active(comp["t_burst"], comp["t_age"])
        return torch.pow(10.0, comp["log_mformed"]) * comp["f_burst"] * active

    def derived(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        """Derived quantities per galaxy (each shape (N,)).

        ``log_sfr_10myr``, ``log_sfr_100myr``: log10 of the mass formed in the last 10 / 100 Myr
        divided by that time [M☉/yr] (burst included), with an sSFR floor of 1e-15 /yr added;
        ``log_ssfr_100myr`` = ``log_sfr_100myr`` − ``log_mstar`` [1/yr]; ``log_mformed``: log10 total
        formed mass [M☉]; ``mwage_gyr``: formed-mass-weighted mean lookback time of formation [Gyr].
        """
        theta = self._prep(theta)
        if theta.shape[0] == 0:
            return {k: theta.new_zeros(0) for k in DERIVED_NAMES}
        parts = [self._derived_chunk(t) for t in self._chunks(theta)]
        return {k: torch.cat([p[k] for p in parts]) for k in DERIVED_NAMES}

    def _derived_chunk(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        comp = self._components(theta)
        m_formed = torch.pow(10.0, comp["log_mformed"])
        floor = SSFR_FLOOR * torch.pow(10.0, comp["log_mstar"])
        args = (m_formed, comp["beta"], comp["f_burst"], comp["t_burst"], comp["t_age"])
        sfr10 = sfh_mod.mean_sfr(0.01, *args)
        sfr100 = sfh_mod.mean_sfr(0.1, *args)
        log_sfr100 = torch.log10(sfr100 + floor)
        # formed-mass-weighted age: smooth part on a fine grid of lookback times, burst exactly
        t_fine = comp["t_age"].unsqueeze(1) * self._u_fine.unsqueeze(0)
        g = sfh_mod.smooth_mass_fraction_within(t_fine, comp["t_age"], comp["beta"])
        mids = 0.5 * (t_fine[:, 1:] + t_fine[:, :-1])
        age_smooth = ((g[:, 1:] - g[:, :-1]) * mids).sum(1)
        f_eff = comp["f_eff"]
        mwage = (1.0 - f_eff) * age_smooth + f_eff * comp["t_burst"]
        return {
            "log_sfr_10myr": torch.log10(sfr10 + floor),
            "log_sfr_100myr": log_sfr100,
            "log_ssfr_100myr": log_sfr100 - comp["log_mstar"],
            "log_mformed": comp["log_mformed"],
            "mwage_gyr": mwage,
        }

    def __repr__(self) -> str:
        return (f"SPSModel(bands={list(self.bands)}, z_max={self.z_max}, device='{self.device}', "
                f"dtype={self.dtype}, cosmology={self.cosmo.cosmology.name})")
