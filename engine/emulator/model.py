"""The emulator: the SPS's exact linear structure, with networks only where the SPS is nonlinear.

**What is emulated.**  The direct SPS (:mod:`engine.sps.model`) is *linear* in most of θ.  With the
basis weights β = stick-breaking(κ) (Leja et al. 2019 Dirichlet prior, as in the PopSED paper), the
metallicity-node weights w_Z (linear in Z between the grid metallicities, as bagpipes) and the effective
burst fraction f (``f_burst``, zero when ``t_burst`` ≥ t_age(z)), a band's luminosity per M☉ formed is

    L_b(θ) = Σ_k w_Z,k [ (1 − f) Σ_i β_i L[k, i, b](z, τ1, τ2, n) + f L_burst[k, b](z, τ2, n, t_burst) ]

and the surviving mass per M☉ formed is the same combination of survival fractions, which are cheap
closed-form sums over the SSP age bins (:func:`engine.sps.model.component_survival`).  The flux is then
L_b · 10^log_mformed · (1+z)/(4π D_L²) with log_mformed = log_mstar − log10(surviving fraction).  This is
an identity of the SPS (``tests/test_sps_physics.py::test_linear_decomposition_reproduces_the_fluxes``,
agreement 1e-10), not an approximation.  Only L and L_burst are nonlinear -- in redshift (the filter
shift) and dust -- and only they are learned, by two Speculator networks (Alsing et al. 2020):

- the *basis* network: (z, τ1, τ2, n_dust) → h = −2.5 log10 L for every (metallicity node, basis, band);
- the *burst* network: (z, τ2, n_dust, t_burst, Z) → h of the burst's band luminosity (bursts are older
  than 10 Myr: no birth-cloud term).  A single-age population changes fast and unevenly with age (the
  SSP library is tabulated every 0.02 dex), which a network of log t_burst learns poorly; so the network is
  also given the burst's *dust-free rest-frame SED*: the mean L_ν of the SSP in ``N_WINDOWS`` log-spaced
  rest-frame windows, interpolated exactly as the SPS interpolates the burst (linear in log age between
  tabulated ages, linear in Z between grid metallicities).  What is left to learn -- redshifting that
  SED through the filters and attenuating it -- is smooth.

Both also see the bump strength E_b(n) = max(0, 0.85 − 1.9 n) (Kriek & Conroy 2013; it has a kink the
network should not have to learn) and log(1 + τ_ISM) at each band's rest-frame effective wavelength
(:func:`engine.sps.dust.tau_ism_at`), which carries the steep, band-dependent dust dependence.  Outputs
are standardised per output; h fainter than ``H_CLIP`` is censored in training (only too-bright
predictions cost).  Everything else -- SFH weights, metallicity interpolation, burst activity, surviving
mass, distance -- is computed as in the SPS, with the SPS's own functions; the surviving mass of the
smooth bases depends on z alone and is tabulated once on the cosmology grid (:func:`basis_survival_table`,
relative error < 1e-5).  For speed, the de-standardisation of the network outputs is folded into their
last layers (:func:`ln_luminosity_net`), which also drops the outputs of bands not selected.

**Why this design.**  A plain photometric MLP θ (11-d, redshift included) → magnitudes, as in
Alsing et al. (2020) and Li et al. (2023), costs about as much as the direct SPS here, because the direct
SPS is itself a few dense matrix products per galaxy (~2·10⁵ multiply-adds), and it has to learn the
SPS's linear structure over again.  The networks here learn 4-d (basis) and 5-d (burst) functions instead
of an 11-d one, which makes them both smaller and more accurate; the accuracy and speed of the shipped
file are in ``docs/benchmarks.md`` (``popsed emulator check``, ``bench/emulator.py``).
Evaluation uses the networks' folded :class:`~engine.emulator.network.InferenceMLP` form, the basis network's
last layer only at the two metallicity nodes that matter (:class:`NodePairHead`), hand-written backward passes
where autograd's own made extra passes over the largest tensors (hidden layers, node-pair head, the light
combination :func:`weighted_exp_sum`), one interpolation of a table for everything that depends on z alone
(:func:`redshift_table`), and :func:`engine.runtime.tune_cpu_allocator`.  A rest-frame PCA spectral emulator
was not adopted: it would still have to redshift and integrate ~650 wavelength bins per galaxy, the same work
as the direct SPS's photometry.

Files: one ``torch.save`` dict of tensors, numbers and strings (both networks' state dicts and
normalisations, the SSP constants needed by the exact part, and metadata: bands, parameter names and
ranges, training-set size, accuracy against the SPS, versions), loaded with ``weights_only=True``.

Shapes: N galaxies, n_Z metallicity nodes, K = :data:`engine.sps.params.N_SFH_BASES` SFH bases, B bands.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from engine.device import resolve_device
from engine.emulator.network import InferenceMLP, SpeculatorMLP
from engine.errors import ModelFileError
from engine.sps import sfh as sfh_mod
from engine.sps.cosmology import CosmologyTable
from engine.sps.dust import DustCurves, bump_strength, tau_ism_at, tau_ism_from_factors
from engine.sps.model import DERIVED_NAMES, ln_flux_scale_at, metallicity_nodes
from engine.sps.params import (
    IDX,
    KAPPA_SLICE,
    N_SFH_BASES,
    PARAM_NAMES,
    param_bounds,
    prepare_theta,
    validate_theta,
)

FORMAT = "popsed-emulator"
FORMAT_VERSION = 2
#: h = −2.5 log10(L per M☉ formed [1e20 erg/s/Hz]) beyond which a component is censored in training.
#: Typical h is 3–15; a component at h = 60 is ~10¹⁸ times fainter than a galaxy of the same mass.
H_CLIP = 60.0
#: Names of the SSP constants stored in the file (the exact part of the model needs them).
CONSTANTS = (
    "age_edges_gyr",
    "live_frac",
    "ssp_log_ages",
    "ssp_live",
    "zmet_grid",
    "sed_windows",
    "sed_table",
    "sed_mean",
    "sed_std",
)
#: Rest-frame windows of the burst SED features (log-spaced over ``SED_RANGE`` Å).
N_WINDOWS = 24
SED_RANGE = (700.0, 12000.0)
#: Largest bump strength in the box: E_b(n_dust = −3).
_EB_MAX = 0.85 + 1.9 * 3.0


def resolve_cosmology(name: str):
    """An astropy built-in cosmology by name (e.g. ``Planck18``)."""
    import astropy.cosmology as ac

    cosmo = getattr(ac, name, None)
    if cosmo is None or not isinstance(cosmo, ac.FLRW):
        raise ModelFileError(
            f"unknown cosmology '{name}' in emulator file (built-in astropy realisations only)"
        )
    return cosmo


def _scale_coefficients(
    ranges: Sequence[tuple[float, float]], device, dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """(a, b) with a x + b mapping each column's [lo, hi] onto [−1, 1]."""
    lo = torch.tensor([r[0] for r in ranges], dtype=torch.float64)
    hi = torch.tensor([r[1] for r in ranges], dtype=torch.float64)
    a = 2.0 / (hi - lo)
    return a.to(device=device, dtype=dtype), (-1.0 - lo * a).to(device=device, dtype=dtype)


class ComponentInputs:
    """The networks' inputs, computed from physical quantities (shared by training and evaluation).

    Parameters
    ----------
    z_max : float
        Upper redshift bound of the box.
    lambda_eff : sequence of float
        Effective wavelengths [Å] of *all* the file's bands (in the file's band order).
    """

    def __init__(self, z_max: float, lambda_eff: Sequence[float], device=None, dtype=torch.float32):
        b = param_bounds(z_max)
        self.leff = torch.as_tensor(list(lambda_eff), device=device, dtype=dtype)
        lt = (math.log10(b["t_burst"][0]), math.log10(b["t_burst"][1]))
        eb = (0.0, _EB_MAX)
        # each column scaled from [lo, hi] to [-1, 1] by one multiply-add over all columns at once
        self._basis_ab = _scale_coefficients([b["z"], b["tau1"], b["tau2"], b["n_dust"], eb], device, dtype)
        self._burst_ab = _scale_coefficients(
            [b["z"], b["tau2"], b["n_dust"], eb, lt, b["log_zmet"]], device, dtype
        )

    def dust(self, z, tau2, n_dust) -> torch.Tensor:
        """The dust columns shared by both networks: scaled log(1 + τ_ISM) at each band's rest-frame λ_eff,
        (N, B)."""
        lam = self.leff.unsqueeze(0) / (1.0 + z).unsqueeze(1)
        return dust_columns(tau_ism_at(lam, tau2.unsqueeze(1), n_dust.unsqueeze(1)))

    def basis(self, z, tau1, tau2, n_dust, dust: torch.Tensor | None = None) -> torch.Tensor:
        """Inputs of the basis network, (N, 5 + B); ``dust`` from :meth:`dust` when already computed."""
        x = torch.addcmul(self._basis_ab[1], torch.stack([z, tau1, tau2, n_dust, bump_strength(n_dust)], 1),
                          self._basis_ab[0])
        return torch.cat([x, self.dust(z, tau2, n_dust) if dust is None else dust], 1)

    def burst(
        self, z, tau2, n_dust, t_burst, log_zmet, sed, dust: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Inputs of the burst network, (N, 6 + B + N_WINDOWS); ``t_burst`` [Gyr] ≤ t_age(z); ``sed`` the
        standardised log SED features of :func:`burst_sed_features`."""
        x = torch.addcmul(
            self._burst_ab[1],
            torch.stack([z, tau2, n_dust, bump_strength(n_dust), torch.log10(t_burst), log_zmet], 1),
            self._burst_ab[0],
        )
        return torch.cat([x, self.dust(z, tau2, n_dust) if dust is None else dust, sed], 1)


def dust_columns(tau_ism: torch.Tensor) -> torch.Tensor:
    """The networks' dust inputs from τ_ISM at the bands' rest-frame λ_eff: log(1 + τ)/3 − 1, (N, B)."""
    return torch.log1p(tau_ism) / 3.0 - 1.0


def redshift_table(cosmo: CosmologyTable, lambda_eff: Sequence[float]) -> torch.Tensor:
    """Everything the emulator needs that is a function of z alone, on the cosmology table's z grid: columns
    t_age [Gyr], D_L [Mpc], then per band (all ``lambda_eff`` [Å]) k(λ)/R_V, drude(λ)/R_V and ln(λ/λ_V) at the
    rest-frame λ = λ_eff/(1+z) (Calzetti curve and bump of :func:`engine.sps.dust.tau_ism_at`), (n, 2 + 3B).

    One gather and one interpolation per galaxy then give them all (:meth:`CosmologyTable.interp_index`),
    where evaluating the dust curve per galaxy and band took ~40 small operations forward and ~60 backward,
    a tenth of the emulator's time.  τ_ISM = τ2 (k/R_V + E_b(n) drude/R_V) exp(n ln(λ/λ_V)); its linear
    interpolation on the 2049-point grid is within 2e-6 of the direct formula in log(1 + τ) (test), except
    within one grid cell of Calzetti's branch points, where the published curve has a small jump (≤ 3e-3)."""
    lam = np.asarray(lambda_eff, dtype=np.float64)[None, :] / (1.0 + cosmo.z_grid[:, None])
    # the SPS's tabulated factors, on an (n, B) grid
    curves = DustCurves(lam, torch.device("cpu"), torch.float64)
    age, d_l = (t.detach().cpu().double().unsqueeze(1) for t in cosmo.tables)
    return torch.cat([age, d_l, curves.k_over_rv, curves.drude_over_rv, curves.ln_ratio], 1)


def burst_sed_features(sed_table: torch.Tensor, k_z: torch.Tensor, a_z: torch.Tensor, k_b: torch.Tensor,
                       a_b: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Standardised log10 of the burst's dust-free rest-frame SED in the feature windows, (N, N_WINDOWS).

    ``sed_table`` (n_Z, S, W): mean L_ν of each single-age SSP in each window; the four (metallicity, age)
    corners are mixed linearly, exactly as the SPS mixes the burst spectra (indices/weights from
    :func:`engine.sps.model.metallicity_nodes` and :func:`engine.sps.sfh.burst_interpolation`).
    """
    n_s = sed_table.shape[1]
    flat = sed_table.reshape(-1, sed_table.shape[2])
    i00, i10 = k_z * n_s + k_b, (k_z + 1) * n_s + k_b
    az, ab = a_z.unsqueeze(1), a_b.unsqueeze(1)
    mix = torch.lerp(torch.lerp(flat[i00], flat[i00 + 1], ab), torch.lerp(flat[i10], flat[i10 + 1], ab), az)
    return (torch.log10(mix.clamp(min=1e-30)) - mean) / std


def basis_survival_table(
    cosmo: CosmologyTable, age_edges_gyr: torch.Tensor, live_frac: torch.Tensor
) -> torch.Tensor:
    """Surviving mass per M☉ formed of each pure basis at each metallicity node, tabulated on the cosmology
    table's redshift grid, (n, n_Z, N_SFH_BASES).

    It depends on z only (through t_age(z)), so the emulator interpolates this table
    (:meth:`CosmologyTable.interp`) instead of integrating the SFH bases over ~40 age bins per galaxy;
    computed in float64 with the SPS's own :func:`engine.sps.model.component_survival` (linear
    interpolation error < 1e-5)."""
    t_age = torch.as_tensor(cosmo.age_grid_gyr, dtype=torch.float64)
    w = sfh_mod.basis_bin_weights(t_age, age_edges_gyr.detach().cpu().double())
    s_basis = torch.einsum("nia,ka->nki", w, live_frac.detach().cpu().double())
    return s_basis.to(device=live_frac.device, dtype=live_frac.dtype)


def ln_luminosity_net(
    net: SpeculatorMLP, y_mean: torch.Tensor, y_std: torch.Tensor, rows: Sequence[int]
) -> InferenceMLP:
    """The evaluation form (:class:`InferenceMLP`) of a trained network that outputs ln L directly, for the
    output ``rows`` only.

    The networks are trained on standardised h = −2.5 log10 L; the de-standardisation and the change to
    ln L = −0.4 ln(10) · (y · std + mean) are affine, so they are folded into the last layer (in float64),
    which saves three passes over the largest tensors and computes only the selected bands' outputs."""
    c = -0.4 * math.log(10.0)
    return InferenceMLP(net, rows, c * y_std.double(), c * y_mean.double()).eval()


def inverse_permutation(order: torch.Tensor) -> torch.Tensor:
    """The permutation that undoes ``x[order]``."""
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.shape[0], device=order.device)
    return inverse


class _GroupedLinear(torch.autograd.Function):
    """Row block j of ``h`` (sizes ``counts``) times its own weights: out[s_j:e_j] = h[s_j:e_j] W_jᵀ + b_j.

    Written straight into one output (forward) and one input gradient (backward), instead of slicing ``h``
    per group: autograd's backward of each slice fills a zero tensor the size of ``h`` and copies the
    block into it.  W and b are constants (no gradient)."""

    @staticmethod
    def forward(ctx, h: torch.Tensor, counts: list[int], w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        out = h.new_empty((h.shape[0], w.shape[1]))
        start = 0
        for j, c in enumerate(counts):
            if c:
                torch.addmm(b[j], h[start:start + c], w[j].t(), out=out[start:start + c])
                start += c
        ctx.counts = counts
        ctx.save_for_backward(w)
        return out

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        if not ctx.needs_input_grad[0]:
            return None, None, None, None
        (w,) = ctx.saved_tensors
        g = g.contiguous()
        g_h = g.new_empty((g.shape[0], w.shape[2]))
        start = 0
        for j, c in enumerate(ctx.counts):
            if c:
                torch.mm(g[start:start + c], w[j], out=g_h[start:start + c])
                start += c
        return g_h, None, None, None


class _WeightedExpSum(torch.autograd.Function):
    """out[n, b] = Σ_k w[n, k] exp(ln_l[n, k, b]): the light of a galaxy from its components' ln L (N, K, B)
    and weights (N, K), as batched (1 × K)(K × B) products, with a hand-written backward.

    Autograd's graph for ``(w[..., None] * exp(ln_l)).sum(1)`` makes five passes over the (N, K, B)
    tensors and broadcasts along the short band axis; this makes three."""

    @staticmethod
    def forward(ctx, ln_l: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        e = ln_l.exp()
        ctx.save_for_backward(e, w)
        return torch.bmm(w.unsqueeze(1), e).squeeze(1)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        e, w = ctx.saved_tensors
        g_ln = (w.unsqueeze(2) * g.unsqueeze(1)).mul_(e) if ctx.needs_input_grad[0] else None
        g_w = torch.bmm(e, g.unsqueeze(2)).squeeze(2) if ctx.needs_input_grad[1] else None
        return g_ln, g_w


def weighted_exp_sum(ln_l: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Σ_k w[n, k] exp(ln_l[n, k, b]) for ``ln_l`` (N, K, B) and ``w`` (N, K): (N, B); differentiable in
    both."""
    return _WeightedExpSum.apply(ln_l.contiguous(), w.contiguous())


class NodePairHead(torch.nn.Module):
    """The basis network's last layer evaluated only for the two metallicity nodes that bracket each galaxy.

    Of the n_Z nodes' outputs only nodes k and k+1 have weight (linear interpolation in Z), so the rows
    are grouped by k (one sort) and each group is multiplied by the weights of its two nodes alone:
    2/n_Z of the full layer's work, and no gather of the full (N, n_Z, K·B) output afterwards.

    Parameters
    ----------
    net : InferenceMLP
        The basis network in evaluation form; its outputs are ordered (node, basis, band).
    n_z : int
        Number of metallicity nodes.
    """

    def __init__(self, net: InferenceMLP, n_z: int):
        super().__init__()
        w = net.w_out.reshape(n_z, -1, net.w_out.shape[1])
        b = net.b_out.reshape(n_z, -1)
        self.register_buffer("w_pair", torch.cat([w[:-1], w[1:]], 1))  # (n_Z − 1, 2·K·B, H)
        self.register_buffer("b_pair", torch.cat([b[:-1], b[1:]], 1))  # (n_Z − 1, 2·K·B)
        self.n_z = n_z

    def forward(self, h: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """Outputs of nodes k and k+1 for hidden features ``h`` (N, H) and lower nodes ``k`` (N,): (N, 2·K·B).

        Rows already in increasing k (as :meth:`Emulator.fluxes` orders them) are used in place; otherwise
        they are sorted here and the outputs put back in the input order."""
        if k.shape[0] == 0:
            return h.new_zeros((0, self.b_pair.shape[1]))
        counts = torch.bincount(k, minlength=self.n_z - 1).tolist()
        grouped = k.shape[0] < 2 or bool((k[1:] >= k[:-1]).all())
        hs = h if grouped else h.index_select(0, order := torch.argsort(k))
        out = _GroupedLinear.apply(hs.contiguous(), counts, self.w_pair, self.b_pair)
        return out if grouped else out.index_select(0, inverse_permutation(order))


class Emulator:
    """A trained emulator with the forward API of :class:`engine.sps.SPSModel`.

    Use :func:`load` to read one from disk; :mod:`engine.emulator.train` makes them.
    """

    param_names: tuple[str, ...] = PARAM_NAMES
    derived_names: tuple[str, ...] = DERIVED_NAMES

    def __init__(
        self,
        nets: dict[str, SpeculatorMLP],
        norms: dict[str, tuple[torch.Tensor, torch.Tensor]],
        constants: dict[str, torch.Tensor],
        metadata: dict,
        device=None,
        dtype: torch.dtype = torch.float32,
        band_index: Sequence[int] | None = None,
    ):
        self.device = resolve_device(device)
        self.dtype = dtype
        self.metadata = metadata
        self.nets = dict(nets)  # as trained (saved by :meth:`state`), never modified
        self._norms_raw = norms
        self._constants_raw = constants
        c = {k: v.to(device=self.device, dtype=dtype) for k, v in constants.items()}
        self.age_edges_gyr, self.live_frac = c["age_edges_gyr"], c["live_frac"]
        self.ssp_log_ages, self.ssp_live, self.zmet_grid = c["ssp_log_ages"], c["ssp_live"], c["zmet_grid"]
        self.sed_table, self.sed_mean, self.sed_std = c["sed_table"], c["sed_mean"], c["sed_std"]
        self.n_z = int(self.zmet_grid.shape[0])
        all_bands = tuple(metadata["bands"])
        self._band_index = list(range(len(all_bands))) if band_index is None else list(band_index)
        self.bands: tuple[str, ...] = tuple(all_bands[i] for i in self._band_index)
        n_all = len(all_bands)
        rows = {
            "basis": [
                (k * N_SFH_BASES + i) * n_all + b
                for k in range(self.n_z)
                for i in range(N_SFH_BASES)
                for b in self._band_index
            ],
            "burst": self._band_index,
        }
        self._ln_nets = {k: ln_luminosity_net(net, *norms[k], rows[k]).to(device=self.device, dtype=dtype)
                         for k, net in nets.items()}
        self._basis_pairs = NodePairHead(self._ln_nets["basis"], self.n_z)
        self.z_max = float(metadata["z_max"])
        b = param_bounds(self.z_max)
        self.bounds = torch.tensor([b[n] for n in PARAM_NAMES], device=self.device, dtype=dtype)
        self.cosmo = CosmologyTable(
            resolve_cosmology(metadata["cosmology"]), z_max=self.z_max, device=self.device, dtype=dtype
        )
        self.inputs = ComponentInputs(self.z_max, metadata["lambda_eff"], self.device, dtype)
        self._s_basis_table = basis_survival_table(self.cosmo, c["age_edges_gyr"], c["live_frac"])
        self._z_table = redshift_table(self.cosmo, metadata["lambda_eff"]).to(device=self.device, dtype=dtype)
        self._sps = None

    # ---------------------------------------------------------------- helpers
    def validate_theta(self, theta: torch.Tensor) -> None:
        """Raise ``ValueError`` naming the parameter if θ is malformed or outside the training box."""
        validate_theta(theta, self.bounds, PARAM_NAMES)

    def _prep(self, theta) -> torch.Tensor:
        return prepare_theta(theta, self.bounds, self.device, self.dtype)

    def component_luminosities(
        self, z, tau1, tau2, n_dust, t_burst, log_zmet
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Emulated band luminosities per M☉ formed, for the selected bands: of the pure bases at the two
        metallicity nodes k, k+1 that bracket the galaxy's Z (N, 2, K, B; k from
        :func:`engine.sps.model.metallicity_nodes`), and of the burst at the galaxy's metallicity (N, B);
        ``t_burst`` [Gyr] ≤ t_age(z) (see the module docstring)."""
        ln_basis, ln_burst = self.component_ln_luminosities(z, tau1, tau2, n_dust, t_burst, log_zmet)
        return torch.exp(ln_basis), torch.exp(ln_burst)

    def component_ln_luminosities(self, z, tau1, tau2, n_dust, t_burst, log_zmet,
                                  nodes: tuple[torch.Tensor, ...] | None = None,
                                  dust: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """ln of :meth:`component_luminosities` (what the networks output).

        ``nodes`` = (k_Z, a_Z, k_age, a_age) of :func:`engine.sps.model.metallicity_nodes` and
        :func:`engine.sps.sfh.burst_interpolation`, and the networks' ``dust`` columns
        (:meth:`ComponentInputs.dust`), when the caller has them."""
        n = z.shape[0]
        if nodes is None:
            nodes = (*metallicity_nodes(log_zmet, self.zmet_grid),
                     *sfh_mod.burst_interpolation(t_burst, self.ssp_log_ages))
        k_z, a_z, k_b, a_b = nodes
        if dust is None:
            dust = self.inputs.dust(z, tau2, n_dust)
        h = self._ln_nets["basis"].features(self.inputs.basis(z, tau1, tau2, n_dust, dust))
        ln_basis = self._basis_pairs(h, k_z)
        sed = burst_sed_features(self.sed_table, k_z, a_z, k_b, a_b, self.sed_mean, self.sed_std)
        ln_burst = self._ln_nets["burst"](self.inputs.burst(z, tau2, n_dust, t_burst, log_zmet, sed, dust))
        return ln_basis.view(n, 2, N_SFH_BASES, len(self.bands)), ln_burst

    def _dust_columns(self, zt: torch.Tensor, tau2: torch.Tensor, n_dust: torch.Tensor) -> torch.Tensor:
        """:meth:`ComponentInputs.dust` from the rows ``zt`` of :func:`redshift_table` interpolated at each
        galaxy's z."""
        k_rv, drude_rv, ln_lam = zt[:, 2:].view(zt.shape[0], 3, (zt.shape[1] - 2) // 3).unbind(1)
        return dust_columns(
            tau_ism_from_factors(tau2.unsqueeze(1), n_dust.unsqueeze(1), k_rv, drude_rv, ln_lam)
        )

    # ---------------------------------------------------------------- public API (as SPSModel)
    def fluxes(self, theta: torch.Tensor) -> torch.Tensor:
        """AB flux densities [nanomaggies], shape (N, B); differentiable in θ."""
        theta = self._prep(theta)
        # rows in order of metallicity node, so the basis network's last layer works on contiguous blocks
        k_z, a_z = metallicity_nodes(theta[:, IDX["log_zmet"]], self.zmet_grid)
        order = torch.argsort(k_z)
        theta, k_z, a_z = theta.index_select(0, order), k_z[order], a_z.index_select(0, order)
        c = {name: theta[:, i] for name, i in IDX.items()}
        z = c["z"]
        # every function of z alone from one interpolation of the redshift table
        k_t, a_t = self.cosmo.interp_index(z)
        zt = torch.lerp(self._z_table[k_t], self._z_table[k_t + 1], a_t.unsqueeze(1))
        t_age, d_l = zt[:, 0], zt[:, 1]
        beta = sfh_mod.stick_breaking(theta[:, KAPPA_SLICE])
        f = c["f_burst"] * sfh_mod.burst_active(c["t_burst"], t_age)
        t_b = torch.minimum(c["t_burst"], t_age)  # the burst's age when active; irrelevant (f = 0) otherwise
        k_b, a_b = sfh_mod.burst_interpolation(t_b, self.ssp_log_ages)
        # only the two bracketing metallicity nodes have weight: light and surviving mass combine those alone
        ln_lum2, ln_lum_b = self.component_ln_luminosities(
            z,
            c["tau1"],
            c["tau2"],
            c["n_dust"],
            t_b,
            c["log_zmet"],
            nodes=(k_z, a_z, k_b, a_b),
            dust=self._dust_columns(zt, c["tau2"], c["n_dust"]),
        )
        nodes = torch.stack([k_z, k_z + 1], 1)  # (N, 2)
        w_node = torch.stack([1.0 - a_z, a_z], 1)  # (N, 2)
        w2 = w_node.unsqueeze(2) * beta.unsqueeze(1)  # (N, 2, K)
        g = 1.0 - f
        n, n_b = ln_lum_b.shape
        band = weighted_exp_sum(
            ln_lum2.reshape(n, 2 * N_SFH_BASES, n_b), g.unsqueeze(1) * w2.reshape(n, 2 * N_SFH_BASES)
        ) + f.unsqueeze(1) * torch.exp(ln_lum_b)
        # surviving mass at those two nodes only: the smooth bases' z table and the burst's SSP ages
        k_t = k_t.unsqueeze(1)
        s_basis = torch.lerp(
            self._s_basis_table[k_t, nodes], self._s_basis_table[k_t + 1, nodes], a_t[:, None, None]
        )
        k_b = k_b.unsqueeze(1)
        s_burst = torch.lerp(self.ssp_live[nodes, k_b], self.ssp_live[nodes, k_b + 1], a_b.unsqueeze(1))
        surv = g * (w2 * s_basis).sum((1, 2)) + f * (w_node * s_burst).sum(1)
        ln_scale = math.log(10.0) * c["log_mstar"] - torch.log(surv) + ln_flux_scale_at(z, d_l)
        return (band * torch.exp(ln_scale).unsqueeze(1)).index_select(0, inverse_permutation(order))

    def magnitudes(self, theta: torch.Tensor) -> torch.Tensor:
        """AB magnitudes (N, B); differentiable in θ.  Fluxes are floored as in the SPS."""
        f = self.fluxes(theta)
        return 22.5 - 2.5 * torch.log10(f.clamp(min=torch.finfo(f.dtype).tiny))

    def derived(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        """Derived quantities (SFRs, sSFR, formed mass, mass-weighted age): exact, from the SPS's SFH code."""
        return self.sps.derived(theta)

    @property
    def sps(self):
        """The direct SPS model for the same bands, cosmology and box (created on first use)."""
        if self._sps is None:
            from engine.sps import SPSModel

            self._sps = SPSModel(
                self.bands,
                cosmology=self.cosmo.cosmology,
                device=self.device,
                dtype=self.dtype,
                z_max=self.z_max,
                uv_bump=bool(self.metadata.get("uv_bump", True)),
            )
        return self._sps

    def _with(self, device, dtype, band_index) -> "Emulator":
        return Emulator(
            self.nets, self._norms_raw, self._constants_raw, self.metadata, device, dtype, band_index
        )

    def select_bands(self, bands: Sequence[str]) -> "Emulator":
        """An emulator restricted to ``bands`` (in that order); ``ModelFileError`` naming bands it lacks."""
        missing = [b for b in bands if b not in self.bands]
        if missing:
            raise ModelFileError(
                f"emulator was not trained on band(s) {', '.join(missing)}; it has {', '.join(self.bands)}"
            )
        idx = [self._band_index[self.bands.index(b)] for b in bands]
        return self._with(self.device, self.dtype, idx)

    def to(self, device=None, dtype: torch.dtype | None = None) -> "Emulator":
        return self._with(device or self.device, dtype or self.dtype, self._band_index)

    def state(self) -> dict:
        """The file payload (tensors, numbers, strings only)."""
        nets = {}
        for k, net in self.nets.items():
            mean, std = self._norms_raw[k]
            nets[k] = {"hidden": list(net.hidden), "n_in": net.n_in, "n_out": net.n_out,
                       "state_dict": {n: v.detach().cpu().float() for n, v in net.state_dict().items()},
                       "y_mean": mean.detach().cpu().double(), "y_std": std.detach().cpu().double()}
        return {"format": FORMAT, "format_version": FORMAT_VERSION, "metadata": self.metadata, "nets": nets,
                "constants": {k: v.detach().cpu().double() for k, v in self._constants_raw.items()}}

    def __repr__(self) -> str:
        return (f"Emulator(bands={list(self.bands)}, z_max={self.z_max}, device='{self.device}', "
                f"n_train={self.metadata.get('n_train')})")


def save(path: str | Path, emulator: Emulator) -> Path:
    """Write an emulator file atomically (a dict of tensors and plain values, no pickled objects)."""
    import os
    import tempfile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(tmp, 0o666 & ~mask)
    try:
        torch.save(emulator.state(), tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def expected_shapes(n_z: int, n_bands: int) -> dict[str, tuple[int, int]]:
    """(n_in, n_out) of each network for ``n_z`` metallicity nodes and ``n_bands`` bands."""
    return {"basis": (5 + n_bands, n_z * N_SFH_BASES * n_bands), "burst": (6 + n_bands + N_WINDOWS, n_bands)}


def load(path: str | Path, device=None, bands: Sequence[str] | None = None,
         dtype: torch.dtype = torch.float32) -> Emulator:
    """Load an emulator file (``weights_only=True``); clear :class:`ModelFileError` on any problem.

    Parameters
    ----------
    path : str or Path
    device : str, optional
        ``None``/``"auto"``: CUDA when available.
    bands : sequence of str, optional
        Restrict (and order) the bands; an error names any band the emulator lacks.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"emulator file '{path}' does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelFileError(
            f"'{path}' is not a readable popsed emulator file (truncated or foreign: "
            f"{exc.__class__.__name__})"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ModelFileError(f"'{path}' is not a popsed emulator file (no '{FORMAT}' header)")
    version = payload.get("format_version")
    if version != FORMAT_VERSION:
        raise ModelFileError(
            f"emulator file '{path}' has format version {version}; this popsed reads version "
            f"{FORMAT_VERSION} "
            f"(retrain it with `popsed emulator train`)"
        )
    try:
        meta = payload["metadata"]
        if tuple(meta["param_names"]) != PARAM_NAMES:
            raise ModelFileError(
                f"emulator file '{path}' has parameters {meta['param_names']}, expected {PARAM_NAMES}"
            )
        constants = {k: payload["constants"][k] for k in CONSTANTS}
        shapes = expected_shapes(int(constants["zmet_grid"].shape[0]), len(meta["bands"]))
        nets, norms = {}, {}
        for k, (n_in, n_out) in shapes.items():
            d = payload["nets"][k]
            if int(d["n_in"]) != n_in or int(d["n_out"]) != n_out:
                raise ValueError(f"{k} network shape ({d['n_in']} -> {d['n_out']}) does not match "
                                 f"{len(meta['bands'])} bands ({n_in} -> {n_out})")
            net = SpeculatorMLP(n_in, n_out, tuple(int(h) for h in d["hidden"]))
            net.load_state_dict(d["state_dict"])
            nets[k], norms[k] = net, (d["y_mean"], d["y_std"])
        emu = Emulator(nets, norms, constants, meta, device=device, dtype=dtype)
    except ModelFileError:
        raise
    except (KeyError, RuntimeError, TypeError, ValueError, AttributeError) as exc:
        raise ModelFileError(f"emulator file '{path}' is damaged or incompatible ({exc.__class__.__name__}: "
                             f"{str(exc).splitlines()[0][:120]})") from None
    return emu.select_bands(bands) if bands is not None else emu
