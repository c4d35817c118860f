"""The :class:`Catalog` (a validated catalog in nanomaggies) and the hashes that identify it."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine.catalog.units import _POGSON, MAG_ZP, nanomaggy


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
    meta : dict
        The file's table metadata with plain values (e.g. ``selection``, which ``popsed mock`` writes).
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
    meta: dict = field(default_factory=dict, repr=False)

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

    def subset(self, rows: np.ndarray, note: str | None = None) -> Catalog:
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
