"""Photometric catalogs: read, validate and convert to a common flux space.

:func:`read_catalog` turns a catalog file into a :class:`Catalog`: per galaxy and band a flux and
its 1σ error in **nanomaggies** (AB: ``m = 22.5 − 2.5 log10 f``), NaN where there is no measurement,
plus an optional spectroscopic redshift.  Every problem a user can cause raises
:class:`engine.errors.CatalogError` with a one-line message naming the file, the column(s) and the
counts (the ``popsed`` command line turns it into exit status 2, no traceback).  The reader never
writes anything.

Formats
-------
Chosen from the file suffix (or ``format=``):

==================  ==========================  =============================================
suffix              ``format``                  read by
==================  ==========================  =============================================
.fits .fit .fts     ``fits``                    astropy Table (memory-mapped); ``.gz`` allowed
.ecsv               ``ecsv``                    astropy Table
.csv                ``csv``                     astropy Table (``ascii.csv``); ``.gz`` allowed
.hdf5 .h5 .hdf      ``hdf5``                    astropy Table for a table dataset written by
                                                astropy; h5py for a *group of 1-d datasets*
                                                (e.g. LSST DC2 / RAIL ``photometry/``)
.parquet .pq        ``parquet``                 pyarrow, only the needed columns, one at a time
==================  ==========================  =============================================

An HDF5 file with several tables (or a FITS file with several table HDUs) needs ``table:`` in the
column map.  An in-memory :class:`astropy.table.Table` may be passed instead of a path.

Finding the band columns
------------------------
Bands are speclite filter names (``sdss2010-r``, ``galex-nuv``, ``lsst2023-i`` …; matched without
regard to case, stored with speclite's spelling) or paths of ECSV filter files (band name = the file
stem; :attr:`Catalog.filters` keeps the path).  Without a column map, columns are found by
convention (column names are matched case-insensitively)::

    mag_<band>   with  mag_err_<band> | magerr_<band> | mag_<band>_err       AB magnitudes
    flux_<band>  with  flux_err_<band> | fluxerr_<band> | flux_<band>_err
                       | flux_ivar_<band> (inverse variance)                   fluxes
    <band>       with  <band>_err                                             magnitudes, or fluxes
                                                                              if the column's unit
                                                                              is a flux density

``bands=None`` or ``"auto"`` takes every band found, in column order; an explicit list (or a
comma-separated string) takes those, in that order, and names any that are missing with close
matches.  Columns such as ``mag_u`` whose suffix is not a filter name are ignored with a note in
the report (map them with a column map).

A band with both fluxes and magnitudes (the project's mock catalogs) is read from the fluxes
(negative fluxes are valid measurements); magnitudes fill rows where the flux is missing, and the
two must agree (see the error table).

Column map (``columns=`` / ``--columns map.yml``)
-------------------------------------------------
A YAML or JSON file (or a dict) like::

    bands:                          # optional; without it bands are found by convention
      sdss2010-u: {mag: u, mag_err: u_err, ab_offset: -0.04}
      sdss2010-r: {flux: "MODELFLUX[2]", flux_ivar: "MODELFLUX_IVAR[2]",
                   extinction: "EXTINCTION[2]", flux_unit: nanomaggy}
      filters/nb501.ecsv: {flux: f_nb501, flux_err: f_nb501_err}    # band name "nb501"
    z_spec: zspec                   # column of spectroscopic redshifts; null = none
    flux_unit: uJy                  # unit of flux columns without a unit of their own
    table: photometry               # HDF5 dataset/group or FITS HDU (name or number)

Per band: ``mag`` + ``mag_err`` and/or ``flux`` + (``flux_err`` or ``flux_ivar``);
``flux_unit`` (overrides the global one), ``extinction`` (a number in magnitudes or a column of
per-row values; subtracted from magnitudes, i.e. fluxes multiplied by ``10**(0.4 A)``) and
``ab_offset`` (magnitudes added to bring the catalog's system onto AB, e.g. SDSS u −0.04; fluxes are
scaled accordingly).  ``NAME[k]`` picks element ``k`` of a vector column (FITS ``MODELFLUX[5]``).
Unknown keys, duplicate keys, missing columns and one column used for two bands are errors.
Column names are matched exactly, else case-insensitively.

Flux units
----------
A flux column's own unit (astropy unit string, e.g. from FITS ``TUNIT`` or ECSV) wins; else the
band's/map's ``flux_unit``; else ``flux_unit=`` (``--flux-unit``); else nanomaggies are assumed
(with a note in the report).  Accepted: ``nanomaggy``/``nmgy``, ``maggy``, ``Jy``, ``mJy``,
``uJy``/``µJy``, ``nJy`` and any astropy spectral flux density (``erg/(s cm2 Hz)``).  A column
unit that contradicts an explicit ``flux_unit`` is an error.  :data:`nanomaggy` and :data:`maggy`
are astropy units (3.631e-6 Jy and 3631 Jy).

No measurement, sentinels and refusals
--------------------------------------
A (band, row) becomes "no measurement" (NaN flux and error), counted in the report, when

* the value or its error is NaN, ±inf, or masked/null;
* a magnitude is a sentinel: ``|m| ≥ 50`` (covers ±99, ±999, ±9999) or ``m ≤ −10``;
* a flux is a sentinel: −99, −999, −9999, or ``|f| ≥ 1e20`` (in the column's unit);
* an error is a sentinel: 0, −1, −99, −999, −9999, or ``≥ 1e20`` (flux errors); an inverse
  variance is 0 or inf;
* a magnitude error exceeds :data:`MAX_MAG_ERR` = 5 mag (S/N < 0.22: the magnitude carries no
  information; LSST DC2 has u-band errors up to 86 mag).

Other negative errors (or inverse variances) are refused.  Negative *fluxes* are valid
measurements and are kept.  A band left with fewer than 50 % measured rows is refused.  Rows with no
measured band at all are dropped (counted); the rest are kept with NaN in their unmeasured bands
(the loss compares asinh magnitudes and the noise model handles them).  A *usable galaxy* is a row
with at least one measured band; fewer than ``min_rows`` (100) usable galaxies is refused.
Spectroscopic redshifts that are NaN/inf or −99/−999/−9999 become NaN (counted);
:func:`check_redshift` refuses values outside a model's range.

Errors (each a one-line :class:`~engine.errors.CatalogError`)
-------------------------------------------------------------
==========================================  ===========================================================
case                                        message (abridged)
==========================================  ===========================================================
missing file                                ``catalog file not found: F``
FITS/HDF5 file with several tables          ``F: the HDF5 file holds 2 tables (a, b); choose one with 'table:' …``
unknown format                              ``unknown catalog format '.txt' for F; use …``
unreadable / corrupt file                   ``cannot read F as Parquet: …``
no band columns                             ``no band columns in F: expected mag_<band>/…``
band asked for but absent                   ``F: no columns for band(s) X (looked for …); bands found: …; did you mean …``
unknown band name                           ``F: unknown band 'sdss-r' (not a speclite filter name …); did you mean 'sdss2010-r'?``
band without errors                         ``F: band X has values (column C) but no error column (looked for …)``
non-numeric column                          ``F: column C is not numeric: N of M values are not numbers (e.g. 'x')``
errors ≤ 0                                  ``F: column C has N negative errors (min …) of M rows; …``
NaN/inf / sentinels, < 50 % left            ``F: band X (C ± E) keeps only K of N rows (p %) …: NaN/inf ×a, mag=99 ×b …``
a band that appears twice                   ``F: band X appears twice: columns A and B``
flux and magnitude disagree                 ``F: band X: flux column A and magnitude column B disagree: n of m rows … (median m(flux) − mag = …)``
fewer than 100 usable galaxies              ``F: only K usable galaxies (of N rows; …); need at least 100``
bands not covered by the emulator           ``F: catalog band(s) X not covered by the emulator (it has …)``
spec-z outside the model's range            ``F: N of M galaxies have z_spec outside the model's range [0, 0.65] …``
flux unit contradicts the column's unit     ``F: column C has unit 'uJy' but the flux unit given is 'Jy'; …``
bad column map                              ``column map M: unknown key(s) …`` / ``F: column 'x' (… from column map M) not found``
==========================================  ===========================================================

Large catalogs
--------------
Columns are converted one band at a time straight into the (N, B) output arrays, and Parquet
columns are read one at a time, so peak memory is the output (16 bytes per galaxy and band) plus a
few single-band temporaries (measured: 10⁶ rows × 3 bands, 53 MB of output, numpy peak 79 MB, pyarrow
pool peak ~20 MB; ``bench/catalog_io.py``).  :func:`iter_parquet_batches` streams batches one row
group at a time; :func:`read_parquet_sample` draws uniformly random rows, reading only the row
groups that hold them.

Command line
------------
:func:`add_catalog_arguments` / :func:`catalog_from_args` give any command the options
``--bands --columns --flux-unit --extinction BAND=A|COLUMN --format --min-rows``;
:func:`add_subparser` registers ``popsed catalog FILE [--json]``, which validates a catalog and
prints the summary (exit status 2 with a one-line message on any problem).
"""
from __future__ import annotations

import argparse
import csv
import difflib
import gzip
import hashlib
import importlib.util
import json
import math
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, NoReturn, Sequence

import numpy as np

from engine.errors import CatalogError

__all__ = [
    "Catalog",
    "read_catalog",
    "catalog_from_arrays",
    "check_bands",
    "check_redshift",
    "iter_parquet_batches",
    "read_parquet_sample",
    "CatalogStream",
    "CatalogChunk",
    "open_catalog_stream",
    "parquet_num_rows",
    "flux_unit_factor",
    "load_column_map",
    "known_band_names",
    "nanomaggy",
    "maggy",
    "MAG_ZP",
    "MAX_MAG_ERR",
    "add_catalog_arguments",
    "catalog_from_args",
    "add_subparser",
]

# --------------------------------------------------------------------------------------------
# constants and units
# --------------------------------------------------------------------------------------------

#: AB zero point of nanomaggies: m = MAG_ZP − 2.5 log10(f / nmgy).
MAG_ZP = 22.5
#: Magnitude errors above this (S/N < 0.22) are read as "no measurement".
MAX_MAG_ERR = 5.0
#: Magnitudes are valid in (MAG_MIN, MAG_MAX); outside they are sentinels (±99, ±999, ±9999 …).
MAG_MIN, MAG_MAX = -10.0, 50.0
#: Exact flux values meaning "no measurement" (in the column's own unit); also |f| ≥ FLUX_ABSURD.
FLUX_SENTINELS = (-99.0, -999.0, -9999.0)
FLUX_ABSURD = 1e20
#: Exact error values meaning "no measurement" (0 and these); other negative errors are refused.
ERR_SENTINELS = (0.0, -1.0, -99.0, -999.0, -9999.0)
#: z_spec values meaning "no redshift".
Z_SENTINELS = (-99.0, -999.0, -9999.0)
#: Fraction of rows a band must keep after removing non-measurements.
MIN_MEASURED_FRACTION = 0.5
#: Flux/magnitude agreement: compared where flux S/N ≥ 5; a row disagrees beyond this many mag …
AGREE_TOL_MAG = 0.05
#: … and the band is refused when more than this fraction of compared rows disagree, or when the
#: median offset exceeds AGREE_MEDIAN_MAG.
AGREE_MAX_FRACTION = 0.01
AGREE_MEDIAN_MAG = 0.02
#: Names tried (case-insensitively, in this order) for the spectroscopic redshift column.
Z_SPEC_NAMES = ("z_spec", "zspec", "specz", "spec_z", "z_spectro", "zspectro", "redshift")
_POGSON = 2.5 / math.log(10.0)  # 1.0857…: σ_m = _POGSON σ_f / f

_FORMATS = {"fits": "FITS", "ecsv": "ECSV", "csv": "CSV", "hdf5": "HDF5", "parquet": "Parquet"}
_SUFFIXES = {
    ".fits": "fits", ".fit": "fits", ".fts": "fits",
    ".ecsv": "ecsv", ".csv": "csv",
    ".hdf5": "hdf5", ".h5": "hdf5", ".hdf": "hdf5", ".he5": "hdf5",
    ".parquet": "parquet", ".pq": "parquet", ".parq": "parquet",
}
_COMPRESSED = (".gz", ".bz2", ".xz")


def _make_units():
    import astropy.units as u

    nmgy = u.def_unit(["nanomaggy"], 3.631e-6 * u.Jy,
                      doc="AB nanomaggy: the flux density of an m_AB = 22.5 source (3.631e-6 Jy)")
    mgy = u.def_unit(["maggy"], 3631.0 * u.Jy,
                     doc="AB maggy: the flux density of an m_AB = 0 source (3631 Jy)")
    return nmgy, mgy


nanomaggy, maggy = _make_units()

_UNIT_ALIASES = {
    "nanomaggy": 1.0, "nanomaggies": 1.0, "nmgy": 1.0, "nmaggy": 1.0, "nmaggies": 1.0,
    "maggy": 1e9, "maggies": 1e9, "mgy": 1e9,
    "ujy": 1.0 / 3.631, "µjy": 1.0 / 3.631, "μjy": 1.0 / 3.631, "microjy": 1.0 / 3.631,
    "njy": 1e-3 / 3.631, "mjy": 1e3 / 3.631, "jy": 1e6 / 3.631,
}


def flux_unit_factor(unit: Any) -> float:
    """Multiplicative factor from ``unit`` to nanomaggies (``ValueError`` if not a flux density).

    ``unit`` is a string or an astropy unit; see the module docstring for accepted names.
    """
    import astropy.units as u

    if unit is None:
        raise ValueError("no unit")
    if isinstance(unit, str):
        key = unit.strip().replace(" ", "").lower()
        if key in _UNIT_ALIASES:
            # 'mJy' and 'MJy' differ: resolve case-sensitive names through astropy below
            if key != "mjy":
                return _UNIT_ALIASES[key]
        try:
            unit = u.Unit(unit.strip(), parse_strict="raise")
        except Exception:
            raise ValueError(f"'{unit}' is not a unit astropy knows") from None
    try:
        unit = u.Unit(unit)
    except Exception:
        raise ValueError(f"'{unit}' is not a unit") from None
    if isinstance(unit, u.UnrecognizedUnit):
        return flux_unit_factor(str(unit)) if str(unit).lower() in _UNIT_ALIASES else _bad_unit(unit)
    try:
        return float(unit.to(nanomaggy))
    except Exception:
        pass
    # astropy's own (dimensionless) maggy / nanomaggy
    try:
        if unit != u.dimensionless_unscaled and "mgy" in unit.to_string():
            return float(unit.to(u.nmgy))
    except Exception:
        pass
    return _bad_unit(unit)


def _bad_unit(unit) -> float:
    raise ValueError(f"'{unit}' is not a spectral flux density (f_nu) unit")


def _is_flux_unit(unit_str: str | None) -> bool:
    if not unit_str:
        return False
    try:
        flux_unit_factor(unit_str)
        return True
    except ValueError:
        return False


# --------------------------------------------------------------------------------------------
# the Catalog
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Catalog:
    """A validated photometric catalog in nanomaggies.

    Attributes
    ----------
    path : str or None
        The file read (None for in-memory data).
    bands : tuple of str
        Band names: speclite names (speclite's spelling) or ECSV filter stems, in column order
        (or the order asked for).
    flux, flux_err : ndarray, shape (N, B), float64
        Flux and 1σ error [nanomaggies]; NaN in both where there is no measurement.  Measured
        errors are finite and > 0; fluxes may be negative.
    z_spec : ndarray, shape (N,), or None
        Spectroscopic redshift (NaN where missing).
    sha256 : str
        SHA-256 of the file's bytes (of the arrays for in-memory data).
    report : tuple of str
        One summary line per band, then notes (dropped rows, assumed units, z_spec column …).
    filters : tuple of str
        What to pass to the filter loader per band: the speclite name, or the ECSV file's path.
    row_index : ndarray or None
        Row numbers (0-based) in the source of the rows kept (rows without any measurement are
        dropped).
    """

    path: str | None
    bands: tuple[str, ...]
    flux: np.ndarray
    flux_err: np.ndarray
    z_spec: np.ndarray | None
    sha256: str
    report: tuple[str, ...]
    filters: tuple[str, ...] = ()
    row_index: np.ndarray | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return int(self.flux.shape[0])

    @property
    def measured(self) -> np.ndarray:
        """Boolean (N, B): True where the band has a measurement."""
        return np.isfinite(self.flux)

    def magnitudes(self) -> np.ndarray:
        """AB magnitudes from the fluxes (NaN where the flux is ≤ 0 or missing)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            m = MAG_ZP - 2.5 * np.log10(self.flux)
        m[~(self.flux > 0)] = np.nan
        return m

    def magnitude_errors(self) -> np.ndarray:
        """1σ magnitude errors 1.0857 σ_f / f (NaN where the flux is ≤ 0 or missing)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            e = _POGSON * self.flux_err / self.flux
        e[~(self.flux > 0)] = np.nan
        return e

    def subset(self, rows: np.ndarray, note: str | None = None) -> "Catalog":
        """A catalog of the selected rows (boolean mask or indices); no re-validation."""
        rows = np.asarray(rows)
        idx = np.nonzero(rows)[0] if rows.dtype == bool else rows
        ri = self.row_index[idx] if self.row_index is not None else idx
        rep = self.report + ((note,) if note else (f"subset: {len(idx)} of {len(self)} rows",))
        return Catalog(path=self.path, bands=self.bands, flux=self.flux[idx], flux_err=self.flux_err[idx],
                       z_spec=None if self.z_spec is None else self.z_spec[idx], sha256=self.sha256,
                       report=rep, filters=self.filters, row_index=ri)

    def to_table(self):
        """An astropy Table with ``flux_<b>``, ``flux_err_<b>`` (nanomaggy), ``mag_<b>``,
        ``mag_err_<b>`` (AB mag) per band and ``z_spec``; :func:`read_catalog` reads it back."""
        import astropy.units as u
        from astropy.table import Table

        t = Table()
        mags, merr = self.magnitudes(), self.magnitude_errors()
        for j, b in enumerate(self.bands):
            t[f"flux_{b}"] = self.flux[:, j]
            t[f"flux_{b}"].unit = nanomaggy
            t[f"flux_err_{b}"] = self.flux_err[:, j]
            t[f"flux_err_{b}"].unit = nanomaggy
            t[f"mag_{b}"] = mags[:, j]
            t[f"mag_{b}"].unit = u.mag
            t[f"mag_err_{b}"] = merr[:, j]
            t[f"mag_err_{b}"].unit = u.mag
        if self.z_spec is not None:
            t["z_spec"] = self.z_spec
        t.meta["source"] = self.path or "<memory>"
        t.meta["sha256"] = self.sha256
        t.meta["bands"] = list(self.bands)
        return t


# --------------------------------------------------------------------------------------------
# helpers: messages, band names
# --------------------------------------------------------------------------------------------


def _one_line(msg: str) -> str:
    return " ".join(str(msg).split())


def _fail(msg: str) -> NoReturn:
    raise CatalogError(_one_line(msg))


def _short_list(items: Sequence[str], n: int = 8) -> str:
    items = list(items)
    if not items:
        return "none"
    s = ", ".join(items[:n])
    return s + (f", … ({len(items)} in all)" if len(items) > n else "")


def _pct(k: int, n: int) -> str:
    return f"{100.0 * k / n:.1f} %" if n else "n/a"


_SPECLITE_CACHE: dict[str, str] | None = None


def known_band_names() -> dict[str, str]:
    """speclite filter names, lower-cased → speclite's spelling (from its data folder; no import)."""
    global _SPECLITE_CACHE
    if _SPECLITE_CACHE is None:
        names: dict[str, str] = {}
        try:
            spec = importlib.util.find_spec("speclite")
            for loc in (spec.submodule_search_locations or []) if spec else []:
                d = Path(loc) / "data" / "filters"
                for p in d.glob("*.ecsv"):
                    names[p.stem.lower()] = p.stem
        except Exception:  # pragma: no cover - speclite missing or unreadable
            pass
        if not names:  # pragma: no cover
            try:
                import speclite.filters as sf

                for g in sf.filter_group_names:
                    for n in sf.load_filters(f"{g}-*").names:
                        names[n.lower()] = n
            except Exception:
                pass
        _SPECLITE_CACHE = names
    return _SPECLITE_CACHE


def _resolve_band(name: str, label: str, extra: Mapping[str, str] | None = None) -> tuple[str, str]:
    """(band name, filter spec) for a speclite name or an ECSV path; CatalogError otherwise."""
    if not isinstance(name, str) or not name.strip():
        _fail(f"{label}: band names must be non-empty strings, got {name!r}")
    name = name.strip()
    known = known_band_names()
    if name.lower() in known:
        canon = known[name.lower()]
        return canon, canon
    if extra and name.lower() in extra:
        return name, extra[name.lower()]
    if name.lower().endswith(".ecsv") or os.sep in name or "/" in name:
        p = Path(name)
        if not p.is_file():
            _fail(f"{label}: filter file '{name}' for a band does not exist")
        return p.stem, str(p)
    close = difflib.get_close_matches(name.lower(), list(known), n=6, cutoff=0.6)
    same = [c for c in close if c.split("-")[-1] == name.lower().split("-")[-1]]
    close = (same + [c for c in close if c not in same])[:3]
    hint = f"; did you mean {', '.join(repr(known[c]) for c in close)}?" if close else ""
    _fail(f"{label}: unknown band '{name}' (not a speclite filter name nor an ECSV filter file){hint}")
    raise AssertionError  # unreachable


# --------------------------------------------------------------------------------------------
# sources: uniform column access over tables, HDF5 groups and Parquet
# --------------------------------------------------------------------------------------------

_INDEXED = re.compile(r"^(.*)\[(\d+)\]$")


class _Source:
    """Column access: names, units, numeric arrays (float64, NaN for masked/null)."""

    label: str
    names: list[str]
    nrows: int
    dup_names: list[str]

    def unit(self, name: str) -> str | None:  # pragma: no cover - interface
        raise NotImplementedError

    def raw(self, name: str) -> Any:  # pragma: no cover - interface
        raise NotImplementedError

    def close(self) -> None:
        pass

    # -- shared logic --------------------------------------------------------------------
    def find(self, ref: str) -> str | None:
        """The source's column (or ``NAME[k]``) for a reference; exact, then case-insensitive."""
        m = _INDEXED.match(ref)
        base, idx = (m.group(1), m.group(2)) if m else (ref, None)
        if base in self.names:
            hit = base
        else:
            low = [n for n in self.names if n.lower() == base.lower()]
            if len(low) != 1:
                return None
            hit = low[0]
        return hit if idx is None else f"{hit}[{idx}]"

    def array(self, ref: str) -> np.ndarray:
        m = _INDEXED.match(ref)
        base, idx = (m.group(1), int(m.group(2))) if m else (ref, None)
        data = self.raw(base)
        arr = _to_float(data, self.label, ref if idx is None else base)
        if idx is None:
            if arr.ndim != 1:
                _fail(f"{self.label}: column {base} holds vectors of shape {arr.shape[1:]}; "
                      f"pick one element with {base}[k] in a column map")
            return arr
        if arr.ndim != 2 or idx >= arr.shape[1]:
            _fail(f"{self.label}: column {ref} does not exist ({base} has shape {arr.shape[1:]})")
        return np.ascontiguousarray(arr[:, idx])


def _to_float(data: Any, label: str, name: str) -> np.ndarray:
    """float64 copy of a column; masked → NaN; CatalogError for non-numeric data."""
    mask = None
    if np.ma.isMaskedArray(data):
        mask = np.ma.getmaskarray(data)
        data = np.ma.getdata(data)
    try:
        arr = np.asarray(data)
    except Exception:
        _fail(f"{label}: column {name} is not numeric ({type(data).__name__})")
    kind = arr.dtype.kind
    if kind in "iuf":
        out = arr.astype(np.float64, copy=False)  # never modified in place below
    elif kind in "OUS":
        out = _parse_strings(arr, label, name)
    else:
        _fail(f"{label}: column {name} is not numeric (dtype {arr.dtype})")
    if mask is not None and mask.any():
        out = np.where(mask.reshape(out.shape), np.nan, out)
    return out


def _parse_strings(arr: np.ndarray, label: str, name: str) -> np.ndarray:
    """Numbers stored as text (e.g. a CSV column with a stray word): parse or refuse with a count."""
    flat = arr.reshape(-1)
    uniq, inv = np.unique(flat.astype(str), return_inverse=True)
    vals = np.empty(len(uniq), dtype=np.float64)
    bad: list[str] = []
    nbad = 0
    counts = np.bincount(inv.reshape(-1), minlength=len(uniq))
    for k, s in enumerate(uniq):
        t = s.strip()
        if t in ("", "--", "null", "None", "NULL"):
            vals[k] = np.nan
            continue
        try:
            vals[k] = float(t)
        except ValueError:
            vals[k] = np.nan
            nbad += int(counts[k])
            if len(bad) < 1:
                bad.append(t[:20])
    if nbad:
        _fail(f"{label}: column {name} is not numeric: {nbad} of {flat.size} values are not "
              f"numbers (e.g. {bad[0]!r})")
    return vals[inv].reshape(arr.shape)


class _TableSource(_Source):
    def __init__(self, table, label: str, dup_names: Sequence[str] = ()):
        self.t = table
        self.label = label
        self.names = list(table.colnames)
        self.nrows = len(table)
        self.dup_names = list(dup_names)

    def unit(self, name):
        u = getattr(self.t[name], "unit", None)
        return None if u is None else str(u)

    def raw(self, name):
        return self.t[name]


class _H5GroupSource(_Source):
    def __init__(self, h5file, group, label: str):
        self.f = h5file
        self.g = group
        self.label = label
        self.names = [k for k, v in group.items() if _h5_is_column(v)]
        lens = {group[k].shape[0] for k in self.names}
        self.nrows = lens.pop() if len(lens) == 1 else 0
        self.dup_names = []

    def unit(self, name):
        attrs = self.g[name].attrs
        for key in ("unit", "units", "UNIT"):
            if key in attrs:
                v = attrs[key]
                return v.decode() if isinstance(v, bytes) else str(v)
        return None

    def raw(self, name):
        return self.g[name][()]

    def close(self):
        self.f.close()


def _h5_is_column(obj) -> bool:
    import h5py

    return (isinstance(obj, h5py.Dataset) and obj.dtype.names is None and 1 <= obj.ndim <= 2
            and not obj.name.endswith("__table_column_meta__"))


class _ParquetSource(_Source):
    def __init__(self, path: str, label: str):
        import pyarrow.parquet as pq

        self.pf = pq.ParquetFile(path, memory_map=False)
        self.label = label
        schema = self.pf.schema_arrow
        self.names = list(schema.names)
        seen: dict[str, int] = {}
        for n in self.names:
            seen[n] = seen.get(n, 0) + 1
        self.dup_names = [n for n, c in seen.items() if c > 1]
        self.nrows = self.pf.metadata.num_rows
        self._units = _parquet_units(schema)
        self._types = {n: schema.field(i).type for i, n in enumerate(self.names)}
        self.groups: list[int] | None = None  # read only these row groups (streaming); None = all

    def restrict(self, groups: Sequence[int]) -> "_ParquetSource":
        """A view of the same file that reads only row groups ``groups`` (shares the open file)."""
        view = object.__new__(type(self))
        view.__dict__.update(self.__dict__)
        view.groups = [int(g) for g in groups]
        view.nrows = int(sum(self.pf.metadata.row_group(g).num_rows for g in view.groups))
        return view

    def unit(self, name):
        return self._units.get(name)

    def raw(self, name):
        import pyarrow as pa

        typ = self._types[name]
        if self.groups is None:
            col = self.pf.read(columns=[name], use_threads=False).column(0)
        else:
            col = self.pf.read_row_groups(self.groups, columns=[name], use_threads=False).column(0)
        if pa.types.is_fixed_size_list(typ) or pa.types.is_list(typ):
            try:
                return np.asarray(col.to_pylist(), dtype=np.float64)
            except Exception:
                _fail(f"{self.label}: column {name} holds lists of unequal length or non-numbers")
        if pa.types.is_floating(typ) or pa.types.is_integer(typ):
            if col.null_count:
                col = col.cast(pa.float64())
            return col.to_numpy()
        if pa.types.is_string(typ) or pa.types.is_large_string(typ):
            return np.asarray(col.to_pylist(), dtype=object).astype(str)
        _fail(f"{self.label}: column {name} is not numeric (Parquet type {typ})")

    def close(self):
        try:
            self.pf.close()
        except Exception:  # pragma: no cover
            pass


def _parquet_units(schema) -> dict[str, str]:
    """Column units from astropy's ``table_meta_yaml`` or pyarrow field metadata ``unit``."""
    units: dict[str, str] = {}
    meta = schema.metadata or {}
    if b"table_meta_yaml" in meta:
        try:
            from astropy.table import meta as tmeta

            hdr = tmeta.get_header_from_yaml(meta[b"table_meta_yaml"].decode().splitlines())
            for d in hdr.get("datatype", []):
                if d.get("unit"):
                    units[d["name"]] = str(d["unit"])
        except Exception:
            pass
    for f in schema:
        if f.metadata and b"unit" in f.metadata:
            units.setdefault(f.name, f.metadata[b"unit"].decode(errors="replace"))
    return units


def _detect_format(path: Path, fmt: str | None, label: str) -> str:
    if fmt is not None:
        f = fmt.lower().lstrip(".")
        if f in _FORMATS:
            return f
        if f in ("fit", "fts"):
            return "fits"
        if f in ("h5", "hdf"):
            return "hdf5"
        if f in ("pq", "parq"):
            return "parquet"
        if f.startswith("ascii"):
            return f
        _fail(f"unknown catalog format '{fmt}' for {label}; use one of fits, ecsv, csv, hdf5, parquet")
    name = path.name.lower()
    for c in _COMPRESSED:
        if name.endswith(c):
            name = name[: -len(c)]
            break
    suffix = Path(name).suffix
    if suffix in _SUFFIXES:
        f = _SUFFIXES[suffix]
        if name != path.name.lower() and f in ("hdf5", "parquet"):
            _fail(f"unknown catalog format '{path.name}' for {label}: compressed {_FORMATS[f]} "
                  f"is not supported; decompress it first")
        return f
    _fail(f"unknown catalog format '{suffix or path.name}' for {label}; use one of .fits, .ecsv, "
          f".csv, .hdf5/.h5, .parquet (or pass format=)")
    raise AssertionError


def _reader_error(label: str, fmt: str, exc: BaseException) -> CatalogError:
    text = _one_line(f"{type(exc).__name__}: {exc}")
    if len(text) > 200:
        text = text[:200] + "…"
    return CatalogError(f"cannot read {label} as {_FORMATS.get(fmt, fmt)}: {text}")


def _csv_header_duplicates(path: Path) -> list[str]:
    """Column names appearing more than once in a CSV header (astropy renames them a, a_1 …)."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rt", newline="", errors="replace") as fh:
            for line in fh:
                if line.strip() and not line.lstrip().startswith("#"):
                    names = next(csv.reader([line]))
                    break
            else:
                return []
    except Exception:
        return []
    seen: dict[str, int] = {}
    for n in names:
        n = n.strip()
        seen[n] = seen.get(n, 0) + 1
    return [n for n, c in seen.items() if c > 1]


def _open_source(path: Path, label: str, fmt: str, table: Any) -> _Source:
    from astropy.table import Table

    if fmt == "parquet":
        try:
            return _ParquetSource(str(path), label)
        except Exception as exc:
            raise _reader_error(label, fmt, exc) from None
    if fmt == "hdf5":
        return _open_hdf5(path, label, table)
    kwargs: dict[str, Any] = {}
    dups: list[str] = []
    if fmt == "fits":
        kwargs = {"format": "fits", "memmap": not path.name.lower().endswith(".gz")}
        if table is not None:
            kwargs["hdu"] = int(table) if isinstance(table, int) or str(table).isdigit() else table
        else:
            tables = _fits_table_hdus(path)
            if len(tables) > 1:
                _fail(f"{label}: the FITS file holds {len(tables)} tables ({_short_list(tables)}); choose one "
                      f"with 'table:' (HDU name or number) in a column map")
    elif fmt == "ecsv":
        kwargs = {"format": "ascii.ecsv"}
    elif fmt == "csv":
        kwargs = {"format": "ascii.csv"}
        dups = _csv_header_duplicates(path)
    else:
        kwargs = {"format": fmt}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t = Table.read(str(path), **kwargs)
    except Exception as exc:
        raise _reader_error(label, fmt, exc) from None
    return _TableSource(t, label, dups)


def _fits_table_hdus(path: Path) -> list[str]:
    """Names (or numbers) of the table HDUs of a FITS file; [] if it cannot be opened (the reader
    then reports the problem)."""
    try:
        from astropy.io import fits

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with fits.open(path, memmap=True, lazy_load_hdus=True) as hl:
                return [h.name or str(i) for i, h in enumerate(hl)
                        if isinstance(h, (fits.BinTableHDU, fits.TableHDU))]
    except Exception:
        return []


def _open_hdf5(path: Path, label: str, table: Any) -> _Source:
    import h5py
    from astropy.table import Table

    try:
        f = h5py.File(str(path), "r")
    except Exception as exc:
        raise _reader_error(label, "hdf5", exc) from None
    try:
        if table is not None:
            key = str(table)
            if key not in f:
                cands = _h5_candidates(f)
                _fail(f"{label}: no HDF5 table '{key}' (tables found: {_short_list([c for _, c in cands])})")
            obj = f[key]
            kind = "table" if isinstance(obj, h5py.Dataset) and obj.dtype.names else (
                "group" if isinstance(obj, h5py.Group) else None)
            if kind is None:
                _fail(f"{label}: HDF5 object '{key}' is neither a table dataset nor a group of columns")
            choice = (kind, key)
        else:
            cands = _h5_candidates(f)
            if not cands:
                _fail(f"{label}: no table in the HDF5 file (no compound dataset and no group of "
                      f"equal-length 1-d datasets)")
            if len(cands) > 1:
                _fail(f"{label}: the HDF5 file holds {len(cands)} tables "
                      f"({_short_list([c for _, c in cands])}); choose one with 'table:' in a column map")
            choice = cands[0]
        if choice[0] == "table":
            f.close()
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    t = Table.read(str(path), format="hdf5", path=choice[1])
            except Exception as exc:
                raise _reader_error(label, "hdf5", exc) from None
            return _TableSource(t, label)
        src = _H5GroupSource(f, f[choice[1]], label)
        if not src.names:
            _fail(f"{label}: HDF5 group '{choice[1]}' has no 1-d datasets")
        lens = {f[choice[1]][k].shape[0] for k in src.names}
        if len(lens) > 1:
            _fail(f"{label}: datasets in HDF5 group '{choice[1]}' have different lengths {sorted(lens)}")
        return src
    except BaseException:
        try:
            f.close()
        except Exception:
            pass
        raise


def _h5_candidates(f) -> list[tuple[str, str]]:
    import h5py

    out: list[tuple[str, str]] = []

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset) and obj.dtype.names and not name.endswith("__table_column_meta__"):
            out.append(("table", name))
        elif isinstance(obj, h5py.Group):
            cols = [v for v in obj.values() if _h5_is_column(v)]
            if cols and len({c.shape[0] for c in cols}) == 1:
                out.append(("group", name))

    cols = [v for v in f.values() if _h5_is_column(v)]
    if cols and len({c.shape[0] for c in cols}) == 1:
        out.append(("group", "/"))
    f.visititems(visit)
    return out


# --------------------------------------------------------------------------------------------
# column map
# --------------------------------------------------------------------------------------------

_MAP_TOP_KEYS = {"bands", "z_spec", "flux_unit", "table"}
_MAP_BAND_KEYS = {"mag", "mag_err", "flux", "flux_err", "flux_ivar", "flux_unit", "extinction", "ab_offset"}


def _yaml_no_dups():
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    def construct_mapping(loader, node, deep=False):
        keys = []
        for k_node, _ in node.value:
            k = loader.construct_object(k_node, deep=deep)
            if k in keys:
                raise _DupKey(k)
            keys.append(k)
        return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)

    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, construct_mapping)
    return Loader


class _DupKey(Exception):
    def __init__(self, key):
        super().__init__(key)
        self.key = key


def load_column_map(columns: str | Path | Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """Load and check a column map (YAML/JSON file or dict); returns (map, label)."""
    if isinstance(columns, Mapping):
        cmap, label = dict(columns), "column map"
    else:
        p = Path(columns)
        label = f"column map {p}"
        if not p.is_file():
            _fail(f"column map file not found: {p}")
        text = p.read_text(errors="replace")
        try:
            if p.suffix.lower() == ".json":
                def hook(pairs):
                    d = {}
                    for k, v in pairs:
                        if k in d:
                            raise _DupKey(k)
                        d[k] = v
                    return d

                cmap = json.loads(text, object_pairs_hook=hook)
            else:
                import yaml

                cmap = yaml.load(text, Loader=_yaml_no_dups())  # noqa: S506 - SafeLoader subclass
        except _DupKey as dk:
            what = "band" if known_band_names().get(str(dk.key).lower()) or str(dk.key).endswith(".ecsv") else "key"
            _fail(f"{label}: {what} '{dk.key}' appears twice")
        except Exception as exc:
            _fail(f"{label} is not valid {'JSON' if p.suffix.lower() == '.json' else 'YAML'}: "
                  f"{_one_line(str(exc))[:160]}")
    if not isinstance(cmap, dict):
        _fail(f"{label}: expected a mapping with keys {sorted(_MAP_TOP_KEYS)}, got {type(cmap).__name__}")
    bad = sorted(set(map(str, cmap)) - _MAP_TOP_KEYS)
    if bad:
        _fail(f"{label}: unknown key(s) {', '.join(bad)} (allowed: {', '.join(sorted(_MAP_TOP_KEYS))})")
    if "bands" in cmap:
        bands = cmap["bands"]
        if not isinstance(bands, dict) or not bands:
            _fail(f"{label}: 'bands' must map band names to {{mag: …, mag_err: …}} / {{flux: …, flux_err: …}}")
        for b, spec in bands.items():
            if not isinstance(spec, dict):
                _fail(f"{label}: band '{b}' must map to a dict like {{mag: COL, mag_err: COL}}, got {spec!r}")
            unk = sorted(set(map(str, spec)) - _MAP_BAND_KEYS)
            if unk:
                _fail(f"{label}: unknown key(s) {', '.join(unk)} for band '{b}' "
                      f"(allowed: {', '.join(sorted(_MAP_BAND_KEYS))})")
            for k in ("mag", "mag_err", "flux", "flux_err", "flux_ivar"):
                if k in spec and not isinstance(spec[k], str):
                    _fail(f"{label}: band '{b}': '{k}' must be a column name, got {spec[k]!r}")
            if "ab_offset" in spec and not _is_number(spec["ab_offset"]):
                _fail(f"{label}: band '{b}': ab_offset must be a number of magnitudes, got {spec['ab_offset']!r}")
            if "extinction" in spec and not (isinstance(spec["extinction"], str) or _is_number(spec["extinction"])):
                _fail(f"{label}: band '{b}': extinction must be a number or a column name")
    if "z_spec" in cmap and cmap["z_spec"] is not None and not isinstance(cmap["z_spec"], str):
        _fail(f"{label}: z_spec must be a column name or null, got {cmap['z_spec']!r}")
    return cmap, label


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


# --------------------------------------------------------------------------------------------
# band discovery
# --------------------------------------------------------------------------------------------


@dataclass
class _Part:
    """One way a band is measured (magnitudes or fluxes)."""

    kind: str  # "mag" | "flux"
    value: str | None = None
    err: str | None = None
    ivar: str | None = None


@dataclass
class _BandSpec:
    name: str
    filter: str
    mag: _Part | None = None
    flux: _Part | None = None
    flux_unit: str | None = None  # from map (band or top level)
    extinction: Any = None  # float or column ref
    ab_offset: float = 0.0


_CONVENTION = (  # (prefix, kind, role) – longest prefixes first
    ("mag_err_", "mag", "err"),
    ("magerr_", "mag", "err"),
    ("flux_ivar_", "flux", "ivar"),
    ("flux_err_", "flux", "err"),
    ("fluxerr_", "flux", "err"),
    ("mag_", "mag", "value"),
    ("flux_", "flux", "value"),
)


def _classify(low: str, lookup: Mapping[str, str]) -> tuple[str, str, str] | None | bool:
    """(band_low, kind, role) for a lower-cased column name; False if it looks like photometry of
    an unknown band (``mag_u``); None otherwise.  Bare band names are returned with kind "?"."""
    for prefix, kind, role in _CONVENTION:
        if low.startswith(prefix):
            rest = low[len(prefix):]
            if role == "value" and rest.endswith("_err") and rest[:-4] in lookup:
                return rest[:-4], kind, "err"
            if rest in lookup:
                return rest, kind, role
            return False
    if low in lookup:
        return low, "?", "value"
    if low.endswith("_err") and low[:-4] in lookup:
        return low[:-4], "?", "err"
    return None


def _discover(src: _Source, lookup: Mapping[str, str]) -> tuple[dict[str, dict[tuple[str, str], list[str]]], list[str], list[str]]:
    """Convention matching: band → {(kind, role): [columns]}, band order, ignored columns."""
    found: dict[str, dict[tuple[str, str], list[str]]] = {}
    order: list[str] = []
    ignored: list[str] = []
    for col in src.names:
        c = _classify(col.lower(), lookup)
        if c is False:
            ignored.append(col)
            continue
        if c is None:
            continue
        band_low, kind, role = c
        if kind == "?":  # bare band name: magnitudes unless the (value) column has a flux unit
            base = col if role == "value" else src.find(col[:-4])
            kind = "flux" if base is not None and _is_flux_unit(src.unit(base)) else "mag"
        band = lookup[band_low]
        if band not in found:
            found[band] = {}
            order.append(band)
        found[band].setdefault((kind, role), []).append(col)
    return found, order, ignored


def _same_filter_letter(band: str, candidates: Sequence[str]) -> list[str]:
    """Candidates naming the same filter in another system (sdss2010-r ↔ sdss2010noatm-r)."""
    suffix = band.split("-")[-1].lower()
    return [c for c in candidates if c.split("-")[-1].lower() == suffix and c.lower() != band.lower()]


def _photometry_like(names: Sequence[str]) -> list[str]:
    """Value/error column pairs that look like photometry under other names (u/u_err, MAG_U/MAGERR_U)."""
    low = {n.lower(): n for n in names}
    pairs = []
    for n in names:
        ln = n.lower()
        cands = [ln + "_err", ln + "err", ln + "_error", "err_" + ln, "e_" + ln, "e" + ln]
        if ln.startswith("mag_"):
            cands += ["magerr_" + ln[4:], "mag_err_" + ln[4:]]
        if ln.startswith("flux_"):
            cands += ["fluxerr_" + ln[5:], "flux_err_" + ln[5:]]
        for c in cands:
            if c in low:
                pairs.append(f"{n}/{low[c]}")
                break
    return pairs


def _specs_from_convention(src: _Source, label: str, wanted: list[tuple[str, str]] | None,
                           extra: Mapping[str, str]) -> tuple[list[_BandSpec], list[str]]:
    lookup = {**known_band_names(), **{k: Path(v).stem for k, v in extra.items()}}
    found, order, ignored = _discover(src, lookup)
    notes: list[str] = []
    # raw duplicate names in the file (CSV header, Parquet schema)
    for d in src.dup_names:
        c = _classify(d.lower(), lookup)
        if c:
            _fail(f"{label}: band {lookup[c[0]]} appears twice: column {d} occurs twice in the file")
    if wanted is None:
        if not order:
            hint = ""
            pairs = _photometry_like(src.names)
            if pairs:
                v, e = pairs[0].split("/")
                key = "flux" if "flux" in v.lower() else "mag"
                hint = (f"; columns {_short_list(pairs, 5)} look like photometry: map them to speclite bands "
                        f"with a column map (--columns), e.g. bands: {{<band>: {{{key}: {v}, {key}_err: {e}}}}}")
            elif ignored:
                hint = (f"; columns {_short_list(ignored, 5)} look like photometry but their band names "
                        f"are not speclite filters: map them with a column map (--columns)")
            _fail(f"no band columns in {label}: expected mag_<band>/mag_err_<band> or "
                  f"flux_<band>/flux_err_<band> with speclite band names (e.g. mag_sdss2010-r), or a "
                  f"column map (--columns); columns present: {_short_list(src.names)}{hint}")
        selected = [(b, extra.get(b.lower(), b)) for b in order]
    else:
        missing = [b for b, _ in wanted if b not in found]
        if missing:
            if not order:
                _fail(f"no band columns in {label} for band(s) {', '.join(missing)}: expected "
                      f"mag_<band>/mag_err_<band> or flux_<band>/flux_err_<band>; columns present: "
                      f"{_short_list(src.names)}")
            hints = []
            for b in missing:
                close = _same_filter_letter(b, order)
                if close:
                    hints.append(f"{b} → {close[0]}?")
            _fail(f"{label}: no columns for band(s) {', '.join(missing)} (looked for mag_<band>, "
                  f"flux_<band>); bands found: {_short_list(order)}"
                  + (f"; did you mean {', '.join(hints)}" if hints else ""))
        selected = list(wanted)
    if ignored:
        notes.append(f"ignored columns {_short_list(ignored, 6)}: not speclite band names (use a column map)")
    specs = []
    for band, filt in selected:
        roles = found[band]
        for key, cols in roles.items():
            if len(cols) > 1:
                _fail(f"{label}: band {band} appears twice: columns {' and '.join(cols)}")
        spec = _BandSpec(name=band, filter=filt)
        for kind in ("mag", "flux"):
            val = roles.get((kind, "value"), [None])[0]
            err = roles.get((kind, "err"), [None])[0]
            ivar = roles.get((kind, "ivar"), [None])[0] if kind == "flux" else None
            if val is None and (err or ivar):
                _fail(f"{label}: band {band} has an error column ({err or ivar}) but no value column "
                      f"({kind}_{band})")
            if val is not None:
                setattr(spec, kind, _Part(kind, val, err, ivar if err is None else None))
                if err and ivar:
                    notes.append(f"{band}: using {err}, ignoring {ivar}")
        specs.append(spec)
    return specs, notes


def _specs_from_map(src: _Source, label: str, cmap: dict, maplabel: str,
                    wanted: list[tuple[str, str]] | None) -> list[_BandSpec]:
    specs: dict[str, _BandSpec] = {}
    used: dict[str, str] = {}
    for key, entry in cmap["bands"].items():
        band, filt = _resolve_band(str(key), maplabel)
        if band in specs:
            _fail(f"{maplabel}: band {band} appears twice (as '{specs[band].filter}' and '{key}')")
        spec = _BandSpec(name=band, filter=filt)
        for kind in ("mag", "flux"):
            val = entry.get(kind)
            err = entry.get(f"{kind}_err")
            ivar = entry.get("flux_ivar") if kind == "flux" else None
            if val is None:
                if err or ivar:
                    _fail(f"{maplabel}: band {band} has '{kind}_err'/'flux_ivar' but no '{kind}' column")
                continue
            refs = {}
            for role, ref in (("value", val), ("err", err), ("ivar", ivar)):
                if ref is None:
                    continue
                hit = src.find(ref)
                if hit is None:
                    close = difflib.get_close_matches(ref, src.names, n=3, cutoff=0.6)
                    _fail(f"{label}: column '{ref}' ({band} {kind} {role}, from {maplabel}) not found"
                          + (f"; did you mean {', '.join(close)}?" if close else
                             f"; columns present: {_short_list(src.names)}"))
                if hit in used and used[hit] != band:
                    _fail(f"{maplabel}: column {hit} is used for two bands ({used[hit]} and {band})")
                used[hit] = band
                refs[role] = hit
            setattr(spec, kind, _Part(kind, refs["value"], refs.get("err"),
                                      refs.get("ivar") if "err" not in refs else None))
        if spec.mag is None and spec.flux is None:
            _fail(f"{maplabel}: band {band} names no 'mag' or 'flux' column")
        spec.flux_unit = entry.get("flux_unit", cmap.get("flux_unit"))
        if "extinction" in entry:
            ext = entry["extinction"]
            if isinstance(ext, str):
                hit = src.find(ext)
                if hit is None:
                    _fail(f"{label}: extinction column '{ext}' for band {band} (from {maplabel}) not found")
                ext = hit
            spec.extinction = ext
        spec.ab_offset = float(entry.get("ab_offset", 0.0))
        specs[band] = spec
    if wanted is None:
        return list(specs.values())
    missing = [b for b, _ in wanted if b not in specs]
    if missing:
        hints = [f"{b} → {c[0]}?" for b in missing if (c := difflib.get_close_matches(b, list(specs), n=1, cutoff=0.6))]
        _fail(f"{label}: band(s) {', '.join(missing)} not in {maplabel} (it maps {_short_list(list(specs))})"
              + (f"; did you mean {', '.join(hints)}" if hints else ""))
    return [specs[b] for b, _ in wanted]


# --------------------------------------------------------------------------------------------
# conversion of one band
# --------------------------------------------------------------------------------------------


@dataclass
class _Converted:
    flux: np.ndarray
    err: np.ndarray
    ok: np.ndarray
    reasons: dict[str, np.ndarray]  # disjoint masks: why a row has no measurement
    desc: str


def _value_masks(x: np.ndarray, mask: np.ndarray, prefix: str, reasons: dict[str, np.ndarray],
                 k: int = 3) -> None:
    """Add masks for the (up to k) most common sentinel values under ``mask``, and the rest."""
    if not mask.any():
        return
    r = np.round(x[mask], 3)
    vals, cnt = np.unique(r, return_counts=True)
    top = vals[np.argsort(-cnt)[:k]]
    rest = mask.copy()
    for v in top:
        m = mask & (np.round(np.where(mask, x, 0.0), 3) == v)
        reasons[f"{prefix}={v:g}"] = m
        rest &= ~m
    if rest.any():
        reasons[f"{prefix} other sentinel"] = rest


def _reason_counts(reasons: Mapping[str, np.ndarray], missing: np.ndarray) -> dict[str, int]:
    out = {}
    for k, m in reasons.items():
        c = int(np.count_nonzero(m & missing))
        if c:
            out[k] = c
    return out


def _check_negative(err: np.ndarray, bad: np.ndarray, label: str, col: str, n: int, what: str = "errors"):
    if bad.any():
        _fail(f"{label}: column {col} has {int(bad.sum())} negative {what} (min {float(err[bad].min()):g}) "
              f"of {n} rows; errors must be > 0 (0, -1, -99, -999, -9999 are read as 'no measurement')")


def _convert_mag(src: _Source, part: _Part, spec: _BandSpec, ext: np.ndarray | float) -> _Converted:
    label = src.label
    if part.err is None:
        _fail(f"{label}: band {spec.name} has values (column {part.value}) but no error column "
              f"(looked for mag_err_<band>, magerr_<band>, <column>_err, or 'mag_err' in a column map)")
    m = src.array(part.value)
    e = src.array(part.err)
    n = m.shape[0]
    reasons: dict[str, np.ndarray] = {}
    nonfinite = ~np.isfinite(m) | ~np.isfinite(e)
    sent_v = ~nonfinite & ((m <= MAG_MIN) | (m >= MAG_MAX))
    sent_e = ~nonfinite & ~sent_v & np.isin(e, ERR_SENTINELS)
    neg = ~nonfinite & ~sent_v & ~sent_e & (e < 0)
    _check_negative(e, neg, label, part.err, n)
    huge = ~nonfinite & ~sent_v & ~sent_e & (e > MAX_MAG_ERR)
    ok = ~(nonfinite | sent_v | sent_e | huge)
    reasons["NaN/inf"] = nonfinite
    _value_masks(m, sent_v, "mag", reasons)
    _value_masks(e, sent_e, "err", reasons)
    reasons[f"mag err>{MAX_MAG_ERR:g}"] = huge
    # in place, to keep temporaries at two arrays per band
    f = np.where(ok, m, MAG_ZP)
    del m
    if spec.ab_offset:
        f += spec.ab_offset
    f -= ext
    f -= MAG_ZP
    f *= -0.4
    with np.errstate(over="ignore", invalid="ignore"):
        np.power(10.0, f, out=f)
        s = np.where(ok, e, 1.0)
        del e
        s *= f
        s /= _POGSON
    return _finish(f, s, ok, reasons, f"{part.value} ± {part.err} [AB mag]")


def _convert_flux(src: _Source, part: _Part, spec: _BandSpec, ext: np.ndarray | float,
                  flux_unit: str | None, notes: list[str]) -> _Converted:
    label = src.label
    if part.err is None and part.ivar is None:
        _fail(f"{label}: band {spec.name} has values (column {part.value}) but no error column "
              f"(looked for flux_err_<band>, fluxerr_<band>, flux_ivar_<band>, <column>_err, or "
              f"'flux_err'/'flux_ivar' in a column map)")
    factor, unit_desc = _flux_factor(src, part, spec, flux_unit, notes)
    f = src.array(part.value)
    n = f.shape[0]
    reasons: dict[str, np.ndarray] = {}
    if part.err is not None:
        e = src.array(part.err)
        ecol = part.err
        nonfinite = ~np.isfinite(f) | ~np.isfinite(e)
        sent_v = ~nonfinite & (np.isin(f, FLUX_SENTINELS) | (np.abs(f) >= FLUX_ABSURD))
        sent_e = ~nonfinite & ~sent_v & (np.isin(e, ERR_SENTINELS) | (e >= FLUX_ABSURD))
        neg = ~nonfinite & ~sent_v & ~sent_e & (e < 0)
        _check_negative(e, neg, label, ecol, n)
    else:
        iv = src.array(part.ivar)
        ecol = part.ivar
        nonfinite = ~np.isfinite(f) | np.isnan(iv)
        sent_v = ~nonfinite & (np.isin(f, FLUX_SENTINELS) | (np.abs(f) >= FLUX_ABSURD))
        sent_e = ~nonfinite & ~sent_v & ((iv == 0) | np.isinf(iv))
        neg = ~nonfinite & ~sent_v & ~sent_e & (iv < 0)
        _check_negative(iv, neg, label, ecol, n, "inverse variances")
        with np.errstate(divide="ignore", invalid="ignore"):
            e = 1.0 / np.sqrt(np.where(nonfinite | sent_v | sent_e | neg, 1.0, iv))
    ok = ~(nonfinite | sent_v | sent_e)
    reasons["NaN/inf"] = nonfinite
    _value_masks(f, sent_v, "flux", reasons)
    if part.err is not None:
        _value_masks(e, sent_e, "err", reasons)
    else:
        reasons["ivar=0/inf"] = sent_e
    scale = factor * 10.0 ** (0.4 * (ext - spec.ab_offset))
    with np.errstate(over="ignore", invalid="ignore"):
        ff = np.where(ok, f, 0.0)
        del f
        ff *= scale
        ss = np.where(ok, e, 1.0)
        del e
        ss *= scale
    return _finish(ff, ss, ok, reasons, f"{part.value} ± {ecol} [{unit_desc}]")


def _finish(f, s, ok, reasons, desc) -> _Converted:
    """Mark rows that overflowed/underflowed in the conversion; NaN (in place) where not ok."""
    bad = np.isfinite(f)
    bad &= np.isfinite(s)
    bad &= s > 0
    np.logical_not(bad, out=bad)
    bad &= ok
    if bad.any():
        reasons["unrepresentable after conversion"] = bad
        ok = ok & ~bad
    notok = ~ok
    f[notok] = np.nan
    s[notok] = np.nan
    return _Converted(f, s, ok, reasons, desc)


def _flux_factor(src: _Source, part: _Part, spec: _BandSpec, flux_unit: str | None,
                 notes: list[str]) -> tuple[float, str]:
    label = src.label
    col_unit = src.unit(part.value.split("[")[0]) if _INDEXED.match(part.value) else src.unit(part.value)
    if col_unit in ("", "None"):
        col_unit = None
    explicit = spec.flux_unit if spec.flux_unit is not None else flux_unit
    if explicit is not None:
        try:
            fx = flux_unit_factor(explicit)
        except ValueError as exc:
            _fail(f"{label}: flux unit for band {spec.name}: {exc}")
    if col_unit is not None:
        try:
            fc = flux_unit_factor(col_unit)
        except ValueError as exc:
            _fail(f"{label}: column {part.value} (band {spec.name}) has unit '{col_unit}': {exc}")
        if explicit is not None and not math.isclose(fc, fx, rel_tol=1e-6):
            _fail(f"{label}: column {part.value} has unit '{col_unit}' but the flux unit given is "
                  f"'{explicit}'; drop one of them")
        return fc, col_unit
    if explicit is not None:
        return fx, str(explicit)
    notes.append(f"{spec.name}: flux column {part.value} has no unit; nanomaggies assumed (set --flux-unit)")
    return 1.0, "nanomaggy (assumed)"


def _extinction_values(src: _Source, spec: _BandSpec, label: str) -> np.ndarray | float:
    ext = spec.extinction
    if ext is None:
        return 0.0
    if isinstance(ext, str):
        a = src.array(ext)
        bad = ~np.isfinite(a) | (a < 0) | (a > 20)
        if bad.any():
            _fail(f"{label}: extinction column {ext} (band {spec.name}) has {int(bad.sum())} values that are "
                  f"NaN/inf, negative or > 20 mag")
        return a
    a = float(ext)
    if not (0 <= a <= 20):
        _fail(f"{label}: extinction for band {spec.name} is {a:g} mag; expected 0–20")
    return a


# --------------------------------------------------------------------------------------------
# assembling the catalog
# --------------------------------------------------------------------------------------------


def _band_line(band: str, n: int, f: np.ndarray, s: np.ndarray, ok: np.ndarray,
               reasons: dict[str, int], desc: str) -> str:
    """The summary line of one band (a few temporaries of the measured rows only)."""
    k = int(ok.sum())
    so = s[ok]
    snr = f[ok]
    snr /= so
    det = int(np.count_nonzero(snr >= 5))
    med_s = float(np.median(so, overwrite_input=True)) if k else float("nan")
    del so
    snr = snr[snr > 0]
    np.divide(_POGSON, snr, out=snr)  # magnitude errors of the positive fluxes
    med_m = float(np.median(snr, overwrite_input=True)) if snr.size else float("nan")
    nm = ", ".join(f"{r} ×{c}" for r, c in reasons.items()) or "none"
    return (f"{band}: {n} rows, {_pct(k, n)} measured, {_pct(det, n)} detected (S/N≥5), "
            f"median error {med_m:.3g} mag ({med_s:.3g} nmgy), from {desc}; no measurement: {nm}")


def _assemble(src: _Source, specs: list[_BandSpec], *, flux_unit: str | None,
              extinction: Mapping[str, Any] | None, z_ref: str | None, z_note: str | None,
              min_rows: int, min_fraction: float, notes: list[str]):
    label = src.label
    n = src.nrows
    B = len(specs)
    if n == 0:
        _fail(f"{label}: only 0 usable galaxies (the file has no rows); need at least {min_rows}")
    _apply_extinction(src, specs, extinction)
    flux = np.empty((n, B), dtype=np.float64)
    err = np.empty((n, B), dtype=np.float64)
    lines: list[str] = []
    for j, spec in enumerate(specs):
        with np.errstate(all="ignore"):  # overflow/underflow is caught by _finish
            lines.append(_one_band(src, spec, j, flux, err, flux_unit=flux_unit, min_fraction=min_fraction,
                                   notes=notes))
    return _finish_rows(src, flux, err, lines, notes, z_ref=z_ref, z_note=z_note, min_rows=min_rows)


def _apply_extinction(src: _Source, specs: list[_BandSpec], extinction: Mapping[str, Any] | None) -> None:
    """Attach the ``extinction=`` values (numbers or column names) to the band specs."""
    label = src.label
    if extinction:
        names = {s.name.lower(): s for s in specs}
        for key, val in extinction.items():
            s = names.get(str(key).lower())
            if s is None:
                _fail(f"{label}: extinction given for band {key}, which is not among the bands read "
                      f"({_short_list([x.name for x in specs])})")
            if isinstance(val, str):
                hit = src.find(val)
                if hit is None:
                    _fail(f"{label}: extinction column '{val}' for band {s.name} not found")
                val = hit
            elif not _is_number(val):
                _fail(f"{label}: extinction for band {s.name} must be a number (mag) or a column name")
            s.extinction = val


def _fraction_fail(label: str, band: str, desc: str, k: int, n: int, reasons: Mapping[str, int],
                   min_fraction: float) -> NoReturn:
    nm = ", ".join(f"{r} ×{c}" for r, c in reasons.items()) or "none"
    _fail(f"{label}: band {band} ({desc}) keeps only {k} of {n} rows ({_pct(k, n)}) with a "
          f"measurement; no measurement: {nm}; need ≥ {100 * min_fraction:.0f} % — drop the band or "
          f"fix the columns")


def _one_band(src: _Source, spec: _BandSpec, j: int, flux: np.ndarray, err: np.ndarray, *,
              flux_unit: str | None, min_fraction: float, notes: list[str], counts: dict | None = None) -> str:
    """Convert one band into column j of the output arrays; its summary line.

    ``counts`` (optional dict) receives ``ok`` (rows measured), ``reasons`` ({reason: rows}) and
    ``desc`` (the columns used), for callers that aggregate over chunks."""
    label = src.label
    n = src.nrows
    ext = _extinction_values(src, spec, label)
    conv_f = _convert_flux(src, spec.flux, spec, ext, flux_unit, notes) if spec.flux else None
    conv_m = _convert_mag(src, spec.mag, spec, ext) if (
        spec.mag and (spec.mag.err is not None or conv_f is None)) else None
    if conv_f is not None and spec.mag is not None:
        _check_agreement(src, spec, conv_f, conv_m, ext, label)
    if conv_f is not None and conv_m is not None:
        fill = ~conv_f.ok & conv_m.ok
        ok = conv_f.ok | fill
        f = np.where(conv_f.ok, conv_f.flux, conv_m.flux)
        s = np.where(conv_f.ok, conv_f.err, conv_m.err)
        if fill.any():
            notes.append(f"{spec.name}: {int(fill.sum())} rows without a flux taken from the magnitudes")
        reasons = _reason_counts(conv_f.reasons, ~ok)
        desc = conv_f.desc + f" (+ {spec.mag.value} ± {spec.mag.err})"
    else:
        c = conv_f if conv_f is not None else conv_m
        f, s, ok, desc = c.flux, c.err, c.ok, c.desc
        reasons = _reason_counts(c.reasons, ~ok)
    k = int(ok.sum())
    if counts is not None:
        counts.update(ok=k, reasons=reasons, desc=desc)
    if k < min_fraction * n:
        _fraction_fail(label, spec.name, desc, k, n, reasons, min_fraction)
    if spec.extinction is not None:
        notes.append(f"{spec.name}: Galactic extinction corrected ("
                     + (f"column {spec.extinction}" if isinstance(spec.extinction, str)
                        else f"A = {float(spec.extinction):g} mag") + ")")
    if spec.ab_offset:
        notes.append(f"{spec.name}: AB offset {spec.ab_offset:+g} mag applied")
    flux[:, j] = f
    err[:, j] = s
    del conv_f, conv_m, f, s
    return _band_line(spec.name, n, flux[:, j], err[:, j], ok, reasons, desc)


def _finish_rows(src: _Source, flux: np.ndarray, err: np.ndarray, lines: list[str], notes: list[str], *,
                 z_ref: str | None, z_note: str | None, min_rows: int):
    """Redshifts, dropping rows without any measured band, the usable-galaxy count."""
    label = src.label
    n, B = flux.shape
    any_ok = np.isfinite(flux).any(axis=1)
    kept = int(any_ok.sum())
    z = None
    if z_ref is not None:
        z = src.array(z_ref)
        if z.ndim != 1:
            _fail(f"{label}: z_spec column {z_ref} is not one value per row")
        zbad = ~np.isfinite(z)
        for v in Z_SENTINELS:
            zbad |= z == v
        z = np.where(zbad, np.nan, z)
        zn = f"z_spec from column {z_ref}"
        if zbad.any():
            zn += f"; {int(zbad.sum())} rows without a value (NaN/inf/sentinel)"
        notes.append(zn)
    elif z_note:
        notes.append(z_note)
    if kept < min_rows:
        _fail(f"{label}: only {kept} usable galaxies (of {n} rows; {n - kept} have no measured band); "
              f"need at least {min_rows}")
    row_index = None
    if kept < n:
        notes.append(f"{n - kept} of {n} rows dropped: no measured band")
        row_index = np.nonzero(any_ok)[0]
        # compact in place, one column at a time (no second (N, B) array)
        for j in range(B):
            flux[:kept, j] = flux[row_index, j]
            err[:kept, j] = err[row_index, j]
        flux = flux[:kept]
        err = err[:kept]
        if z is not None:
            z = z[row_index]
    else:
        row_index = np.arange(n)
    return flux, err, z, tuple(lines) + tuple(notes), row_index


def _check_agreement(src: _Source, spec: _BandSpec, cf: _Converted, cm: _Converted | None,
                     ext, label: str) -> None:
    """Flux and magnitude columns of one band must describe the same photometry."""
    if cm is None:  # magnitudes without errors: convert values only
        m = src.array(spec.mag.value)
        okm = np.isfinite(m) & (m > MAG_MIN) & (m < MAG_MAX)
        with np.errstate(over="ignore", invalid="ignore"):
            fm = 10.0 ** (-0.4 * (np.where(okm, m, 0.0) + spec.ab_offset - ext - MAG_ZP))
    else:
        okm, fm = cm.ok, cm.flux
    both = cf.ok & okm
    with np.errstate(divide="ignore", invalid="ignore"):
        cmp = both & (cf.flux > 5 * cf.err) & (fm > 0)
        if not cmp.any():
            return
        d = -2.5 * np.log10(cf.flux[cmp] / fm[cmp])  # m(flux) − m(column)
    nbad = int(np.count_nonzero(np.abs(d) > AGREE_TOL_MAG))
    med = float(np.median(d))
    if nbad > AGREE_MAX_FRACTION * d.size or abs(med) > AGREE_MEDIAN_MAG:
        _fail(f"{label}: band {spec.name}: flux column {spec.flux.value} and magnitude column "
              f"{spec.mag.value} disagree: {nbad} of {d.size} rows (S/N≥5) differ by more than "
              f"{AGREE_TOL_MAG:g} mag (median m(flux) − mag = {med:+.3f}); check the flux unit or drop one column")


def _hash_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _hash_arrays(*arrays, extra: str = "") -> str:
    h = hashlib.sha256(extra.encode())
    for a in arrays:
        if a is None:
            h.update(b"none")
            continue
        a = np.ascontiguousarray(a)
        h.update(str(a.dtype).encode() + str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _parse_bands(bands, label: str, extra: dict[str, str]) -> list[tuple[str, str]] | None:
    if bands is None:
        return None
    if isinstance(bands, str):
        if bands.strip().lower() == "auto":
            return None
        bands = [b for b in bands.split(",") if b.strip()]
    try:
        bands = list(bands)
    except TypeError:
        _fail(f"{label}: bands must be 'auto' or a list of band names, got {bands!r}")
    if not bands:
        _fail(f"{label}: the list of bands is empty")
    out: list[tuple[str, str]] = []
    for b in bands:
        name, filt = _resolve_band(b, label)
        if any(name == o for o, _ in out):
            _fail(f"{label}: band {name} appears twice in the bands asked for")
        out.append((name, filt))
        if filt != name:
            extra[name.lower()] = filt
    return out


# --------------------------------------------------------------------------------------------
# public entry points
# --------------------------------------------------------------------------------------------


def read_catalog(path, *, bands: str | Sequence[str] | None = None,
                 columns: str | Path | Mapping[str, Any] | None = None,
                 flux_unit: str | None = None, extinction: Mapping[str, Any] | None = None,
                 min_rows: int = 100, format: str | None = None,
                 min_fraction: float = MIN_MEASURED_FRACTION) -> Catalog:
    """Read and validate a photometric catalog.

    Parameters
    ----------
    path : str, Path or astropy Table
        Catalog file (FITS, ECSV, CSV, HDF5, Parquet) or an in-memory table.
    bands : None, "auto", list of str or comma-separated str
        Bands to read (speclite names or ECSV filter paths); None/"auto" = every band found.
    columns : path or dict, optional
        Column map (see the module docstring).
    flux_unit : str, optional
        Unit of flux columns that carry none (``nanomaggy``, ``maggy``, ``uJy``, ``Jy`` …).
    extinction : dict, optional
        Galactic extinction per band: magnitudes (float) or the name of a per-row column.
    min_rows : int
        Minimum number of usable galaxies (rows with at least one measured band).
    format : str, optional
        ``fits``, ``ecsv``, ``csv``, ``hdf5`` or ``parquet`` (default: from the suffix).
    min_fraction : float
        Minimum fraction of rows each band must keep after removing non-measurements.

    Raises
    ------
    CatalogError
        For every problem with the input, with a one-line message.
    """
    cmap: dict[str, Any] = {}
    maplabel = ""
    if columns is not None:
        cmap, maplabel = load_column_map(columns)
    table_sel = cmap.get("table")
    if flux_unit is not None and cmap.get("flux_unit") is not None:
        try:
            same = math.isclose(flux_unit_factor(flux_unit), flux_unit_factor(cmap["flux_unit"]), rel_tol=1e-9)
        except ValueError:
            same = False
        if not same:
            _fail(f"{maplabel}: flux_unit '{cmap['flux_unit']}' contradicts the flux unit given ('{flux_unit}'); "
                  f"drop one of them")
    from astropy.table import Table

    if isinstance(path, Table):
        label = "<in-memory table>"
        src: _Source = _TableSource(path, label)
        spath = None
        sha = None
    else:
        if path is None:
            _fail("no catalog file given")
        p = Path(path)
        label = str(path)
        if not p.exists():
            _fail(f"catalog file not found: {label}")
        if p.is_dir():
            _fail(f"catalog path is a directory, not a file: {label}")
        fmt = _detect_format(p, format, label)
        try:
            if p.stat().st_size == 0:
                _fail(f"cannot read {label} as {_FORMATS.get(fmt, fmt)}: the file is empty")
        except OSError as exc:
            _fail(f"cannot read {label}: {_one_line(str(exc))}")
        src = _open_source(p, label, fmt, table_sel)
        spath = str(path)
        sha = _hash_file(p)
    try:
        specs, notes, z_ref, z_note = _resolve_columns(src, label, cmap, maplabel, bands)
        flux, err, z, report, row_index = _assemble(
            src, specs, flux_unit=flux_unit, extinction=extinction, z_ref=z_ref, z_note=z_note,
            min_rows=min_rows, min_fraction=min_fraction, notes=notes)
    finally:
        src.close()
    bands_t = tuple(s.name for s in specs)
    if sha is None:
        sha = _hash_arrays(flux, err, z, extra=",".join(bands_t))
    return Catalog(path=spath, bands=bands_t, flux=flux, flux_err=err, z_spec=z, sha256=sha,
                   report=report, filters=tuple(s.filter for s in specs), row_index=row_index)


def _resolve_columns(src: _Source, label: str, cmap: dict, maplabel: str, bands):
    """The band columns (from the column map, else by the naming conventions) and the spec-z column of
    ``src``: ``(specs, notes, z_column, z_note)``; one-line errors for anything missing or ambiguous."""
    extra: dict[str, str] = {}
    wanted = _parse_bands(bands, label, extra)
    notes: list[str] = []
    if "bands" in cmap:
        specs = _specs_from_map(src, label, cmap, maplabel, wanted)
    else:
        specs, notes = _specs_from_convention(src, label, wanted, extra)
        if "flux_unit" in cmap:
            for sp in specs:
                sp.flux_unit = cmap["flux_unit"]
    z_ref, z_note = _find_z(src, cmap, label, maplabel)
    return specs, notes, z_ref, z_note


def _find_z(src: _Source, cmap: dict, label: str, maplabel: str) -> tuple[str | None, str | None]:
    if "z_spec" in cmap:
        ref = cmap["z_spec"]
        if ref is None:
            return None, "z_spec: none (column map says null)"
        hit = src.find(ref)
        if hit is None:
            close = difflib.get_close_matches(ref, src.names, n=3, cutoff=0.6)
            _fail(f"{label}: z_spec column '{ref}' (from {maplabel}) not found"
                  + (f"; did you mean {', '.join(close)}?" if close else ""))
        return hit, None
    lows = {}
    for n in src.names:
        lows.setdefault(n.lower(), []).append(n)
    for cand in Z_SPEC_NAMES:
        if cand in lows:
            if len(lows[cand]) > 1:
                _fail(f"{label}: z_spec column appears twice: columns {' and '.join(lows[cand])}")
            return lows[cand][0], None
    return None, f"no z_spec column (looked for {', '.join(Z_SPEC_NAMES)})"


def catalog_from_arrays(bands: Sequence[str], flux, flux_err, z_spec=None, *, min_rows: int = 100,
                        min_fraction: float = MIN_MEASURED_FRACTION) -> Catalog:
    """A :class:`Catalog` from (N, B) arrays in nanomaggies, with the same validation as files
    (sentinels and NaN → no measurement, negative errors refused, ≥ 50 % per band, ≥ min_rows)."""
    from astropy.table import Table

    label = "<arrays>"
    if isinstance(bands, str):
        bands = [bands]
    bands = list(bands)
    extra: dict[str, str] = {}
    wanted = _parse_bands(bands, label, extra)
    try:
        f = np.asarray(flux)
        s = np.asarray(flux_err)
    except Exception as exc:
        _fail(f"{label}: flux/flux_err are not arrays: {_one_line(str(exc))[:100]}")
    if f.ndim == 1 and len(bands) == 1:
        f, s = f[:, None], s[:, None] if s.ndim == 1 else s
    if f.ndim != 2 or f.shape != s.shape or f.shape[1] != len(bands):
        _fail(f"{label}: flux {f.shape} and flux_err {s.shape} must both be (N, {len(bands)}) for bands "
              f"{_short_list([b for b, _ in wanted])}")
    t = Table()
    cols = []
    for j, (b, _) in enumerate(wanted):
        t[f"flux_{b}"] = f[:, j]
        t[f"flux_err_{b}"] = s[:, j]
        cols.append(b)
    cmap: dict[str, Any] = {"bands": {filt: {"flux": f"flux_{b}", "flux_err": f"flux_err_{b}"}
                                      for b, filt in wanted}, "flux_unit": "nanomaggy"}
    if z_spec is not None:
        z = np.asarray(z_spec)
        if z.shape != (f.shape[0],):
            _fail(f"{label}: z_spec has shape {z.shape}, expected ({f.shape[0]},)")
        t["z_spec"] = z
        cmap["z_spec"] = "z_spec"
    else:
        cmap["z_spec"] = None
    src = _TableSource(t, label)
    specs = _specs_from_map(src, label, cmap, "arrays", None)
    flux_o, err_o, z_o, report, row_index = _assemble(
        src, specs, flux_unit=None, extinction=None, z_ref=cmap["z_spec"], z_note=None,
        min_rows=min_rows, min_fraction=min_fraction, notes=[])
    names = tuple(sp.name for sp in specs)
    sha = _hash_arrays(flux_o, err_o, z_o, extra=",".join(names))
    return Catalog(path=None, bands=names, flux=flux_o, flux_err=err_o, z_spec=z_o, sha256=sha,
                   report=tuple(r for r in report if not r.startswith("z_spec: none")),
                   filters=tuple(sp.filter for sp in specs), row_index=row_index)


def check_bands(catalog: Catalog, available: Sequence[str], what: str = "emulator") -> None:
    """Refuse catalog bands that ``available`` (e.g. an emulator's bands) does not cover."""
    avail = list(available)
    low = {a.lower() for a in avail} | {Path(a).stem.lower() for a in avail}
    missing = [b for b in catalog.bands if b.lower() not in low]
    if missing:
        hints = []
        for b in missing:
            same = [a for a in avail if a.split("-")[-1].lower() == b.split("-")[-1].lower()]
            if same:
                hints.append(f"{b} → {same[0]}?")
        _fail(f"{catalog.path or '<catalog>'}: catalog band(s) {', '.join(missing)} not covered by the "
              f"{what} (it has {_short_list(avail)}); read fewer bands (--bands) or choose another {what}"
              + (f"; similar: {', '.join(hints)}" if hints else ""))


def check_redshift(catalog: Catalog, z_min: float, z_max: float) -> None:
    """Refuse spectroscopic redshifts outside the model's range [z_min, z_max] (or missing)."""
    label = catalog.path or "<catalog>"
    if catalog.z_spec is None:
        _fail(f"{label}: no z_spec column, but the fit uses observed redshifts (map one with "
              f"'z_spec:' in a column map)")
    z = catalog.z_spec
    nan = ~np.isfinite(z)
    out = ~nan & ((z < z_min) | (z > z_max))
    if out.any() or nan.any():
        parts = []
        if out.any():
            parts.append(f"{int(out.sum())} of {z.size} galaxies have z_spec outside the model's range "
                         f"[{z_min:g}, {z_max:g}] (min {float(np.nanmin(z)):.4g}, max {float(np.nanmax(z)):.4g})")
        if nan.any():
            parts.append(f"{int(nan.sum())} of {z.size} have no z_spec")
        _fail(f"{label}: " + "; ".join(parts) + "; cut the catalog or change the model's z range")


# --------------------------------------------------------------------------------------------
# Parquet streaming
# --------------------------------------------------------------------------------------------


def _open_parquet(path, columns: Sequence[str] | None):
    import pyarrow.parquet as pq

    p = Path(path)
    label = str(path)
    if not p.is_file():
        _fail(f"catalog file not found: {label}")
    try:
        pf = pq.ParquetFile(str(p), memory_map=False)
    except Exception as exc:
        raise _reader_error(label, "parquet", exc) from None
    names = pf.schema_arrow.names
    if columns is not None:
        columns = list(columns)
        missing = [c for c in columns if c not in names]
        if missing:
            _fail(f"{label}: column(s) {', '.join(missing)} not in the Parquet file "
                  f"(columns present: {_short_list(names)})")
    return pf, columns, label


def _batch_to_numpy(batch) -> dict[str, np.ndarray]:
    import pyarrow as pa

    out = {}
    for name, col in zip(batch.schema.names, batch.columns):
        if (pa.types.is_integer(col.type) or pa.types.is_floating(col.type)) and col.null_count:
            col = col.cast(pa.float64())
        out[name] = col.to_numpy(zero_copy_only=False)
    return out


def iter_parquet_batches(path, columns: Sequence[str] | None = None,
                         batch_rows: int = 65_536) -> Iterator[dict[str, np.ndarray]]:
    """Stream a Parquet file as dicts of numpy arrays of at most ``batch_rows`` rows (nulls → NaN).

    Row groups are read one at a time, so memory is bounded by one row group of the chosen columns
    plus one batch.  Batches do not straddle row groups (a batch may be shorter than ``batch_rows``).
    """
    pf, columns, _ = _open_parquet(path, columns)
    if int(batch_rows) < 1:
        _fail(f"{path}: batch_rows must be ≥ 1, got {batch_rows}")
    try:
        # one row group at a time: pyarrow's reader over the whole file reads ahead (3× the memory here)
        for g in range(pf.num_row_groups):
            for batch in pf.iter_batches(batch_size=int(batch_rows), row_groups=[g], columns=columns,
                                         use_threads=False):
                yield _batch_to_numpy(batch)
    finally:
        pf.close()


def read_parquet_sample(path, n: int, *, seed: int | np.random.Generator | None,
                        columns: Sequence[str] | None = None, return_index: bool = False):
    """``n`` rows drawn uniformly without replacement, read row group by row group.

    Returns a dict of numpy arrays (rows in file order); with ``return_index`` also the row
    numbers.  Only the row groups that hold drawn rows are read, one at a time.
    """
    pf, columns, label = _open_parquet(path, columns)
    try:
        total = pf.metadata.num_rows
        n = int(n)
        if n < 0 or n > total:
            _fail(f"{label}: cannot sample {n} rows from {total}")
        rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        idx = np.sort(rng.choice(total, size=n, replace=False)) if n else np.zeros(0, dtype=np.int64)
        starts = np.zeros(pf.num_row_groups + 1, dtype=np.int64)
        for g in range(pf.num_row_groups):
            starts[g + 1] = starts[g] + pf.metadata.row_group(g).num_rows
        group_of = np.searchsorted(starts, idx, side="right") - 1
        parts: dict[str, list[np.ndarray]] = {}
        for g in np.unique(group_of):
            rows = idx[group_of == g] - starts[g]
            tab = pf.read_row_group(int(g), columns=columns, use_threads=False).take(rows)
            for k, v in _batch_to_numpy(tab.combine_chunks().to_batches()[0]).items() if tab.num_rows else []:
                parts.setdefault(k, []).append(v)
        names = columns if columns is not None else pf.schema_arrow.names
        out = {k: (np.concatenate(parts[k]) if k in parts else np.zeros(0)) for k in names}
    finally:
        pf.close()
    return (out, idx) if return_index else out


#: Parquet catalogs with more rows than this are streamed by ``popsed fit`` (``--stream auto``).
STREAM_MIN_ROWS = 2_000_000
#: Rows per chunk of a :class:`CatalogStream` (consecutive row groups are merged up to this).
STREAM_CHUNK_ROWS = 131_072


@dataclass
class CatalogChunk:
    """Validated rows of one chunk (consecutive row groups) of a streamed catalog.

    Attributes
    ----------
    index : int
        Chunk number (0-based).
    flux, flux_err : ndarray, shape (n, B), float64
        As in :class:`Catalog` (nanomaggies, NaN = no measurement); rows without any measured band
        are dropped.
    z_spec : ndarray, shape (n,), or None
    row_index : ndarray, shape (n,), int64
        Row numbers of these rows in the file (0-based).
    n_file_rows : int
        Rows of the chunk in the file (before dropping rows without a measured band).
    """

    index: int
    flux: np.ndarray
    flux_err: np.ndarray
    z_spec: np.ndarray | None
    row_index: np.ndarray
    n_file_rows: int


class CatalogStream:
    """A Parquet catalog read chunk by chunk (one or a few row groups at a time), never whole.

    Every chunk goes through exactly the conversions of :func:`read_catalog` (units, sentinels,
    extinction, flux/magnitude agreement, z_spec sentinels); the whole-catalog checks (≥ 50 %
    measured per band, ≥ ``min_rows`` usable galaxies) are made by :meth:`scan`, which streams the
    file once and raises the same one-line :class:`~engine.errors.CatalogError` messages.  A negative
    error is refused as soon as the chunk holding it is read (its counts then refer to that chunk).

    Use :func:`open_catalog_stream`.  Memory: one chunk of the needed columns (``chunk_rows`` rows;
    a single row group larger than that is read whole, so write big catalogs with row groups of
    ≲ 10⁶ rows).
    """

    def __init__(self, src: "_ParquetSource", specs: list, z_ref: str | None, z_note: str | None, *,
                 path: str, flux_unit: str | None, min_rows: int, min_fraction: float, notes: list[str],
                 chunk_rows: int = STREAM_CHUNK_ROWS):
        self._src = src
        self._specs = specs
        self._z_ref = z_ref
        self._z_note = z_note
        self._flux_unit = flux_unit
        self._notes = list(notes)
        self.path = path
        self.label = src.label
        self.min_rows = int(min_rows)
        self.min_fraction = float(min_fraction)
        self.bands = tuple(sp.name for sp in specs)
        self.filters = tuple(sp.filter for sp in specs)
        self.n_file_rows = int(src.nrows)
        self.has_z = z_ref is not None
        md = src.pf.metadata
        sizes = [md.row_group(g).num_rows for g in range(md.num_row_groups)]
        self.chunks: list[list[int]] = []
        cur: list[int] = []
        rows = 0
        for g, n in enumerate(sizes):
            if n == 0:
                continue
            cur.append(g)
            rows += n
            if rows >= chunk_rows:
                self.chunks.append(cur)
                cur, rows = [], 0
        if cur:
            self.chunks.append(cur)
        self.chunk_sizes = [int(sum(sizes[g] for g in c)) for c in self.chunks]
        starts = np.zeros(len(sizes) + 1, dtype=np.int64)
        starts[1:] = np.cumsum(sizes)
        self._group_starts = starts
        self._sha: str | None = None
        self.report: tuple[str, ...] | None = None
        self.n_usable: int | None = None

    def __len__(self) -> int:
        return self.n_file_rows

    @property
    def n_chunks(self) -> int:
        return len(self.chunks)

    @property
    def sha256(self) -> str:
        """SHA-256 of the file's bytes (computed on first use, streaming)."""
        if self._sha is None:
            self._sha = _hash_file(Path(self.path))
        return self._sha

    def read_chunk(self, i: int, counts: list[dict] | None = None, notes: list[str] | None = None) -> CatalogChunk:
        """Chunk ``i``, validated and converted (``counts``: one dict per band, see ``_one_band``)."""
        groups = self.chunks[int(i)]
        src = self._src.restrict(groups)
        n = src.nrows
        B = len(self._specs)
        flux = np.empty((n, B), dtype=np.float64)
        err = np.empty((n, B), dtype=np.float64)
        nts = notes if notes is not None else []
        for j, spec in enumerate(self._specs):
            c: dict = {}
            with np.errstate(all="ignore"):
                _one_band(src, spec, j, flux, err, flux_unit=self._flux_unit, min_fraction=0.0, notes=nts,
                          counts=c)
            if counts is not None:
                counts.append(c)
        any_ok = np.isfinite(flux).any(axis=1)
        z = None
        if self._z_ref is not None:
            z = src.array(self._z_ref)
            if z.ndim != 1:
                _fail(f"{self.label}: z_spec column {self._z_ref} is not one value per row")
            zbad = ~np.isfinite(z)
            for v in Z_SENTINELS:
                zbad |= z == v
            z = np.where(zbad, np.nan, z)
        local = np.flatnonzero(any_ok)
        rows = np.concatenate([np.arange(self._group_starts[g], self._group_starts[g + 1]) for g in groups])
        if local.size < n:
            flux, err = flux[local], err[local]
            z = None if z is None else z[local]
        return CatalogChunk(int(i), flux, err, z, rows[local], int(n))

    def iter_chunks(self) -> Iterator[CatalogChunk]:
        """All chunks in file order."""
        for i in range(self.n_chunks):
            yield self.read_chunk(i)

    def scan(self, consumers: Sequence = ()) -> tuple[str, ...]:
        """One streaming pass: validate the whole catalog and feed every chunk to ``consumers``.

        Each consumer is a callable ``consumer(chunk: CatalogChunk)``.  Raises the whole-catalog
        refusals of :func:`read_catalog` (fraction measured per band, usable galaxies); returns the
        report (one line per band, then notes), also kept as :attr:`report`.
        """
        B = len(self._specs)
        ok = np.zeros(B, dtype=np.int64)
        reasons: list[dict[str, int]] = [{} for _ in range(B)]
        descs = [""] * B
        notes: list[str] = []
        kept = 0
        z_missing = 0
        snr5 = np.zeros(B, dtype=np.int64)
        for i in range(self.n_chunks):
            counts: list[dict] = []
            chunk = self.read_chunk(i, counts, notes)
            for j, c in enumerate(counts):
                ok[j] += c["ok"]
                descs[j] = c["desc"]
                for r, cnt in c["reasons"].items():
                    reasons[j][r] = reasons[j].get(r, 0) + int(cnt)
            with np.errstate(invalid="ignore", divide="ignore"):
                snr5 += np.count_nonzero(chunk.flux >= 5 * chunk.flux_err, axis=0)
            kept += chunk.flux.shape[0]
            if chunk.z_spec is not None:
                z_missing += int(np.count_nonzero(~np.isfinite(chunk.z_spec)))
            for fn in consumers:
                fn(chunk)
        n = self.n_file_rows
        for j, spec in enumerate(self._specs):
            rs = {r: c for r, c in reasons[j].items() if c}
            if ok[j] < self.min_fraction * n:
                _fraction_fail(self.label, spec.name, descs[j], int(ok[j]), n, rs, self.min_fraction)
        if kept < self.min_rows:
            _fail(f"{self.label}: only {kept} usable galaxies (of {n} rows; {n - kept} have no measured band); "
                  f"need at least {self.min_rows}")
        lines = []
        for j, spec in enumerate(self._specs):
            rs = {r: c for r, c in reasons[j].items() if c}
            nm = ", ".join(f"{r} ×{c}" for r, c in rs.items()) or "none"
            lines.append(f"{spec.name}: {n} rows, {_pct(int(ok[j]), n)} measured, {_pct(int(snr5[j]), n)} "
                         f"detected (S/N≥5), from {descs[j]}; no measurement: {nm} (streamed in "
                         f"{self.n_chunks} chunks)")
        extra = list(dict.fromkeys(self._notes + notes))
        if self._z_ref is not None:
            zn = f"z_spec from column {self._z_ref}"
            if z_missing:
                zn += f"; {z_missing} rows without a value (NaN/inf/sentinel)"
            extra.append(zn)
        elif self._z_note:
            extra.append(self._z_note)
        if kept < n:
            extra.append(f"{n - kept} of {n} rows dropped: no measured band")
        self.report = tuple(lines) + tuple(extra)
        self.n_usable = kept
        return self.report

    def close(self) -> None:
        self._src.close()


def open_catalog_stream(path, *, bands: str | Sequence[str] | None = None,
                        columns: str | Path | Mapping[str, Any] | None = None,
                        flux_unit: str | None = None, extinction: Mapping[str, Any] | None = None,
                        min_rows: int = 100, min_fraction: float = MIN_MEASURED_FRACTION,
                        chunk_rows: int = STREAM_CHUNK_ROWS) -> CatalogStream:
    """Open a Parquet catalog for streaming (same options and checks as :func:`read_catalog`).

    Only the schema and the row-group metadata are read here; the rows are read chunk by chunk by
    :meth:`CatalogStream.read_chunk` / :meth:`CatalogStream.scan`.
    """
    cmap: dict[str, Any] = {}
    maplabel = ""
    if columns is not None:
        cmap, maplabel = load_column_map(columns)
    if path is None:
        _fail("no catalog file given")
    p = Path(path)
    label = str(path)
    if not p.exists():
        _fail(f"catalog file not found: {label}")
    if p.is_dir():
        _fail(f"catalog path is a directory, not a file: {label}")
    fmt = _detect_format(p, None, label)
    if fmt != "parquet":
        _fail(f"{label}: only Parquet catalogs can be streamed (this one is {_FORMATS.get(fmt, fmt)}); "
              f"convert it to Parquet or read it whole")
    if p.stat().st_size == 0:
        _fail(f"cannot read {label} as Parquet: the file is empty")
    src = _open_source(p, label, fmt, None)
    try:
        specs, notes, z_ref, z_note = _resolve_columns(src, label, cmap, maplabel, bands)
        if src.nrows == 0:
            _fail(f"{label}: only 0 usable galaxies (the file has no rows); need at least {min_rows}")
        _apply_extinction(src, specs, extinction)
    except BaseException:
        src.close()
        raise
    return CatalogStream(src, specs, z_ref, z_note, path=str(path), flux_unit=flux_unit, min_rows=min_rows,
                         min_fraction=min_fraction, notes=notes, chunk_rows=chunk_rows)


def parquet_num_rows(path) -> int | None:
    """Rows of a Parquet file from its footer (None when ``path`` is not a readable Parquet file)."""
    p = Path(path)
    if not p.is_file() or p.suffix.lower() not in (".parquet", ".pq"):
        return None
    try:
        import pyarrow.parquet as pq

        return int(pq.ParquetFile(str(p)).metadata.num_rows)
    except Exception:
        return None


# --------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------


def add_catalog_arguments(parser: argparse.ArgumentParser) -> None:
    """The catalog options shared by commands that read a catalog."""
    parser.add_argument("--bands", default="auto",
                        help="comma-separated speclite band names or ECSV filter files (default: all found)")
    parser.add_argument("--columns", metavar="MAP", default=None,
                        help="YAML/JSON column map (bands → columns, z_spec, flux_unit, table)")
    parser.add_argument("--flux-unit", default=None,
                        help="unit of flux columns without one: nanomaggy, maggy, uJy, Jy …")
    parser.add_argument("--extinction", action="append", default=[], metavar="BAND=A",
                        help="Galactic extinction of a band in mag, or BAND=COLUMN; repeatable")
    parser.add_argument("--format", default=None, help="fits, ecsv, csv, hdf5 or parquet (default: suffix)")
    parser.add_argument("--min-rows", type=int, default=100, help="minimum number of usable galaxies")


def catalog_from_args(args: argparse.Namespace, path=None) -> Catalog:
    """Read the catalog named by parsed :func:`add_catalog_arguments` options."""
    ext: dict[str, Any] = {}
    for item in getattr(args, "extinction", []) or []:
        if "=" not in item:
            _fail(f"--extinction expects BAND=A or BAND=COLUMN, got '{item}'")
        b, v = item.split("=", 1)
        try:
            ext[b.strip()] = float(v)
        except ValueError:
            ext[b.strip()] = v.strip()
    return read_catalog(path if path is not None else args.catalog, bands=args.bands, columns=args.columns,
                        flux_unit=args.flux_unit, extinction=ext or None, min_rows=args.min_rows,
                        format=args.format)


def add_subparser(subparsers) -> None:
    """``popsed catalog FILE``: validate a catalog and print the per-band summary."""
    p = subparsers.add_parser("catalog", help="check a photometric catalog and summarise its bands",
                              description="Read and validate a catalog; print one line per band.")
    p.add_argument("catalog", help="catalog file (FITS, ECSV, CSV, HDF5, Parquet)")
    add_catalog_arguments(p)
    p.add_argument("--json", action="store_true", help="print a JSON summary instead")
    p.set_defaults(func=_cmd_catalog)


def _cmd_catalog(args) -> int:
    cat = catalog_from_args(args)
    if args.json:
        print(json.dumps({"path": cat.path, "rows": len(cat), "bands": list(cat.bands),
                          "filters": list(cat.filters), "sha256": cat.sha256,
                          "z_spec": cat.z_spec is not None, "report": list(cat.report)}))
    else:
        print(f"{cat.path}: {len(cat)} galaxies, {len(cat.bands)} bands, sha256 {cat.sha256[:12]}")
        for line in cat.report:
            print("  " + line)
    return 0
