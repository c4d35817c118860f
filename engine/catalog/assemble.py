"""Assembling validated bands into the (N, B) flux arrays: one band at a time, the per-band summary
lines, the whole-catalog refusals, and dropping rows without any measured band."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NoReturn

import numpy as np

from engine.catalog.bands import _BandSpec
from engine.catalog.columns import ResolvedColumns
from engine.catalog.messages import _fail, _is_number, _pct, _short_list
from engine.catalog.sources import _Source
from engine.catalog.units import _POGSON
from engine.catalog.validate import (
    Z_SENTINELS,
    _check_agreement,
    _convert_flux,
    _convert_mag,
    _extinction_values,
)


def _reason_counts(reasons: Mapping[str, np.ndarray], missing: np.ndarray) -> dict[str, int]:
    out = {}
    for k, m in reasons.items():
        c = int(np.count_nonzero(m & missing))
        if c:
            out[k] = c
    return out


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


def _assemble(src: _Source, cols: ResolvedColumns, *, flux_unit: str | None,
              extinction: Mapping[str, Any] | None, min_rows: int, min_fraction: float):
    """Convert every band of ``cols`` into (N, B) flux and error arrays [nanomaggies], drop the rows
    without any measured band: ``(flux, err, z_spec, report, row_index)``."""
    label = src.label
    n = src.nrows
    specs = cols.specs
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
                                   notes=cols.notes))
    return _finish_rows(src, flux, err, lines, cols.notes, z_ref=cols.z_ref, z_note=cols.z_note,
                        min_rows=min_rows)


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
              flux_unit: str | None, min_fraction: float, notes: list[str],
              counts: dict | None = None) -> str:
    """Convert one band into column j of the output arrays; its summary line.

    ``counts`` (optional dict) receives ``ok`` (rows measured), ``reasons`` ({reason: rows}) and
    ``desc`` (the columns used), for callers that aggregate over chunks."""
    n = src.nrows
    f, s, ok, reasons, desc = _convert_band(src, spec, flux_unit, notes)
    k = int(ok.sum())
    if counts is not None:
        counts.update(ok=k, reasons=reasons, desc=desc)
    if k < min_fraction * n:
        _fraction_fail(src.label, spec.name, desc, k, n, reasons, min_fraction)
    if spec.extinction is not None:
        notes.append(f"{spec.name}: Galactic extinction corrected ("
                     + (f"column {spec.extinction}" if isinstance(spec.extinction, str)
                        else f"A = {float(spec.extinction):g} mag") + ")")
    if spec.ab_offset:
        notes.append(f"{spec.name}: AB offset {spec.ab_offset:+g} mag applied")
    flux[:, j] = f
    err[:, j] = s
    del f, s
    return _band_line(spec.name, n, flux[:, j], err[:, j], ok, reasons, desc)


def _convert_band(src: _Source, spec: _BandSpec, flux_unit: str | None, notes: list[str]):
    """``(flux, err, ok, reasons, desc)`` of one band: from the fluxes where there are some (the
    magnitudes, which must agree, fill rows without a flux), else from the magnitudes."""
    label = src.label
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
        return f, s, ok, reasons, conv_f.desc + f" (+ {spec.mag.value} ± {spec.mag.err})"
    c = conv_f if conv_f is not None else conv_m
    return c.flux, c.err, c.ok, _reason_counts(c.reasons, ~c.ok), c.desc


def _read_z(src: _Source, z_ref: str) -> tuple[np.ndarray, int]:
    """Spectroscopic redshifts of column ``z_ref`` (NaN/inf and sentinels → NaN) and how many are
    missing."""
    z = src.array(z_ref)
    if z.ndim != 1:
        _fail(f"{src.label}: z_spec column {z_ref} is not one value per row")
    zbad = ~np.isfinite(z)
    for v in Z_SENTINELS:
        zbad |= z == v
    return np.where(zbad, np.nan, z), int(zbad.sum())


def _finish_rows(src: _Source, flux: np.ndarray, err: np.ndarray, lines: list[str], notes: list[str], *,
                 z_ref: str | None, z_note: str | None, min_rows: int):
    """Redshifts, dropping rows without any measured band, the usable-galaxy count."""
    label = src.label
    n, B = flux.shape
    any_ok = np.isfinite(flux).any(axis=1)
    kept = int(any_ok.sum())
    z = None
    if z_ref is not None:
        z, nbad = _read_z(src, z_ref)
        zn = f"z_spec from column {z_ref}"
        if nbad:
            zn += f"; {nbad} rows without a value (NaN/inf/sentinel)"
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
