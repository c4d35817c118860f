"""Reading a whole catalog: :func:`read_catalog` (files and tables) and :func:`catalog_from_arrays`."""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from engine.catalog.assemble import _assemble
from engine.catalog.bands import _parse_bands
from engine.catalog.colmap import _specs_from_map, load_column_map
from engine.catalog.columns import ResolvedColumns, _resolve_columns
from engine.catalog.formats import _open_source, detect_format, format_title
from engine.catalog.messages import _fail, _one_line, _short_list
from engine.catalog.model import Catalog, _hash_arrays, _hash_file
from engine.catalog.sources import _Source, _TableSource
from engine.catalog.units import flux_unit_factor
from engine.catalog.validate import MIN_MEASURED_FRACTION


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
        Column map (see docs/catalogs.md, "Column maps").
    flux_unit : str, optional
        Unit of flux columns that carry none (``nanomaggy``, ``maggy``, ``uJy``, ``Jy`` …); a flux
        column without a unit from its file, the column map or this argument is refused.
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
    _check_map_flux_unit(cmap, maplabel, flux_unit)
    from astropy.table import Table

    if isinstance(path, Table):
        label = "<in-memory table>"
        src: _Source = _TableSource(path, label)
        spath, sha = None, None
    else:
        src = _open_file(path, format, cmap.get("table"))
        label, spath, sha = src.label, str(path), _hash_file(Path(path))
    try:
        cols = _resolve_columns(src, label, cmap, maplabel, bands)
        flux, err, z, report, row_index = _assemble(src, cols, flux_unit=flux_unit, extinction=extinction,
                                                    min_rows=min_rows, min_fraction=min_fraction)
        meta = src.meta()
    finally:
        src.close()
    bands_t = tuple(s.name for s in cols.specs)
    if sha is None:
        sha = _hash_arrays(flux, err, z, extra=",".join(bands_t))
    return Catalog(path=spath, bands=bands_t, flux=flux, flux_err=err, z_spec=z, sha256=sha,
                   report=report, filters=tuple(s.filter for s in cols.specs), row_index=row_index, meta=meta)


def _check_map_flux_unit(cmap: Mapping[str, Any], maplabel: str, flux_unit: str | None) -> None:
    """Refuse a column map ``flux_unit`` that contradicts the ``flux_unit=`` given."""
    if flux_unit is not None and cmap.get("flux_unit") is not None:
        try:
            same = math.isclose(flux_unit_factor(flux_unit), flux_unit_factor(cmap["flux_unit"]),
                                rel_tol=1e-9)
        except ValueError:
            same = False
        if not same:
            _fail(f"{maplabel}: flux_unit '{cmap['flux_unit']}' contradicts the flux unit given "
                  f"('{flux_unit}'); drop one of them")


def _check_path(path) -> Path:
    """``path`` as a Path; one-line errors when it is None, missing or a directory."""
    if path is None:
        _fail("no catalog file given")
    p = Path(path)
    if not p.exists():
        _fail(f"catalog file not found: {path}")
    if p.is_dir():
        _fail(f"catalog path is a directory, not a file: {path}")
    return p


def _open_file(path, fmt: str | None, table: Any) -> _Source:
    """The column source of a catalog file (format ``fmt`` or from the suffix; ``table``: the HDU or
    HDF5 path of a column map)."""
    p = _check_path(path)
    label = str(path)
    fmt = detect_format(p, fmt, label)
    try:
        if p.stat().st_size == 0:
            _fail(f"cannot read {label} as {format_title(fmt)}: the file is empty")
    except OSError as exc:
        _fail(f"cannot read {label}: {_one_line(str(exc))}")
    return _open_source(p, label, fmt, table)


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
    for j, (b, _) in enumerate(wanted):
        t[f"flux_{b}"] = f[:, j]
        t[f"flux_err_{b}"] = s[:, j]
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
    cols = ResolvedColumns(specs, [], cmap["z_spec"], None)
    flux_o, err_o, z_o, report, row_index = _assemble(src, cols, flux_unit=None, extinction=None,
                                                      min_rows=min_rows, min_fraction=min_fraction)
    names = tuple(sp.name for sp in specs)
    sha = _hash_arrays(flux_o, err_o, z_o, extra=",".join(names))
    return Catalog(path=None, bands=names, flux=flux_o, flux_err=err_o, z_spec=z_o, sha256=sha,
                   report=tuple(r for r in report if not r.startswith("z_spec: none")),
                   filters=tuple(sp.filter for sp in specs), row_index=row_index)
