"""Validation rules: sentinels, refused errors, the conversion of one band's columns to nanomaggies,
flux/magnitude agreement, and the checks of a catalog against a model (bands, redshift range).

The rules are listed in docs/catalogs.md, "No measurement, sentinels and refusals".
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.catalog.bands import _BandSpec, _Part
from engine.catalog.messages import _fail, _short_list
from engine.catalog.model import Catalog
from engine.catalog.sources import _INDEXED, _Source
from engine.catalog.units import _POGSON, MAG_ZP, _is_flux_unit, flux_unit_factor

#: Magnitude errors above this (S/N < 0.22) are read as "no measurement".
MAX_MAG_ERR = 5.0
#: Magnitudes are valid in (MAG_MIN, MAG_MAX); outside they are sentinels (±99, ±999, ±9999 …).
MAG_MIN, MAG_MAX = -10.0, 50.0
#: Exact flux values meaning "no measurement" (in the column's own unit); also |f| ≥ FLUX_ABSURD.
FLUX_SENTINELS = (-99.0, -999.0, -9999.0)
FLUX_ABSURD = 1e20
#: Exact error values meaning "no measurement" (0 and these); other negative errors are refused.
ERR_SENTINELS = (0.0, -1.0, -99.0, -999.0, -9999.0)
#: A flux column holds magnitudes when ≥ MAGLIKE_FRACTION of its measured values lie in MAGLIKE_RANGE
#: and none is ≤ 0, its 99th percentile is < MAGLIKE_SPAN × its 1st, and its errors grow with the
#: value with a log-log slope > MAGLIKE_ERR_SLOPE or have a median relative error < MAGLIKE_REL_ERR.
MAGLIKE_RANGE = (5.0, 40.0)
MAGLIKE_FRACTION = 0.995
MAGLIKE_SPAN = 3.0
MAGLIKE_ERR_SLOPE = 3.0
MAGLIKE_REL_ERR = 0.02
#: The median positive flux of a column must imply an AB magnitude in this range (the brightest
#: galaxies on the sky are around m_AB = 0; the faintest measured ones around 31).
FLUX_MEDIAN_MAG_RANGE = (0.0, 40.0)
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
    f = src.array(part.value)
    e, ecol, nonfinite, sent_v, sent_e = _flux_error_masks(src, part, f)
    factor, unit_desc = _flux_factor(src, part, spec, flux_unit, notes)
    ok = ~(nonfinite | sent_v | sent_e)
    reasons: dict[str, np.ndarray] = {"NaN/inf": nonfinite}
    _value_masks(f, sent_v, "flux", reasons)
    if part.err is not None:
        _value_masks(e, sent_e, "err", reasons)
    else:
        reasons["ivar=0/inf"] = sent_e
    _check_flux_values(f[ok], e[ok], factor, f"{label}: flux column {part.value} (band {spec.name}) in "
                                             f"{unit_desc}")
    scale = factor * 10.0 ** (0.4 * (ext - spec.ab_offset))
    with np.errstate(over="ignore", invalid="ignore"):
        ff = np.where(ok, f, 0.0)
        del f
        ff *= scale
        ss = np.where(ok, e, 1.0)
        del e
        ss *= scale
    return _finish(ff, ss, ok, reasons, f"{part.value} ± {ecol} [{unit_desc}]")


def _flux_error_masks(src: _Source, part: _Part, f: np.ndarray):
    """``(err, error column, non-finite, value sentinel, error sentinel)`` of a flux column, from its
    errors or inverse variances; negative errors are refused."""
    n = f.shape[0]

    def sent_v_of(nonfinite: np.ndarray) -> np.ndarray:
        return ~nonfinite & (np.isin(f, FLUX_SENTINELS) | (np.abs(f) >= FLUX_ABSURD))

    if part.err is not None:
        e = src.array(part.err)
        nonfinite = ~np.isfinite(f) | ~np.isfinite(e)
        sent_v = sent_v_of(nonfinite)
        sent_e = ~nonfinite & ~sent_v & (np.isin(e, ERR_SENTINELS) | (e >= FLUX_ABSURD))
        _check_negative(e, ~nonfinite & ~sent_v & ~sent_e & (e < 0), src.label, part.err, n)
        return e, part.err, nonfinite, sent_v, sent_e
    iv = src.array(part.ivar)
    nonfinite = ~np.isfinite(f) | np.isnan(iv)
    sent_v = sent_v_of(nonfinite)
    sent_e = ~nonfinite & ~sent_v & ((iv == 0) | np.isinf(iv))
    neg = ~nonfinite & ~sent_v & ~sent_e & (iv < 0)
    _check_negative(iv, neg, src.label, part.ivar, n, "inverse variances")
    with np.errstate(divide="ignore", invalid="ignore"):
        e = 1.0 / np.sqrt(np.where(nonfinite | sent_v | sent_e | neg, 1.0, iv))
    return e, part.ivar, nonfinite, sent_v, sent_e


def _looks_like_magnitudes(v: np.ndarray, s: np.ndarray) -> bool:
    """Measured values and errors of a flux column that are those of magnitudes: all positive and in
    MAGLIKE_RANGE, a narrow spread, and errors that are tiny or grow steeply with the value (a
    magnitude error grows ~10^(0.4 m) towards faint sources; a flux error grows at most ∝ f)."""
    lo, hi = MAGLIKE_RANGE
    if v.min() <= 0 or np.mean((v >= lo) & (v <= hi)) < MAGLIKE_FRACTION:
        return False
    p1, p99 = np.percentile(v, [1, 99])
    if p99 > MAGLIKE_SPAN * p1:
        return False
    lv, ls = np.log(v), np.log(s)
    var = float(np.var(lv))
    slope = float(np.mean((lv - lv.mean()) * (ls - ls.mean())) / var) if var > 1e-6 else 0.0
    return slope > MAGLIKE_ERR_SLOPE or float(np.median(s / v)) < MAGLIKE_REL_ERR


_GUESS_UNITS = (("nanomaggy", 1.0), ("maggy", 1e9), ("uJy", 1 / 3.631), ("nJy", 1e-3 / 3.631),
                ("mJy", 1e3 / 3.631), ("Jy", 1e6 / 3.631))


def _check_flux_values(v: np.ndarray, s: np.ndarray, factor: float, what: str) -> None:
    """Refuse measured fluxes (``v`` ± ``s``, in the column's unit, ``factor`` to nanomaggies) whose
    distribution is not that of galaxy fluxes in that unit, saying what it looks like instead."""
    if v.size < 20:
        return
    if _looks_like_magnitudes(v, s):
        _fail(f"{what} looks like AB magnitudes, not fluxes: its {v.size} measured values lie in "
              f"{float(v.min()):.3g}–{float(v.max()):.3g} with errors of {float(np.median(s)):.2g} (median); "
              f"read it as magnitudes (mag_<band> or 'mag:' in a column map)")
    pos = v[v > 0]
    if pos.size < 20:
        return
    med = float(np.median(pos))
    if not (math.isfinite(med) and med > 0):
        return
    m = MAG_ZP - 2.5 * (math.log10(med) + math.log10(factor))  # in logs: med × factor may underflow
    lo, hi = FLUX_MEDIAN_MAG_RANGE
    if lo <= m <= hi:
        return
    guess = [(abs(MAG_ZP - 2.5 * (math.log10(med) + math.log10(fx)) - 20.0), u) for u, fx in _GUESS_UNITS]
    d, unit = min(guess)
    hint = f"looks like fluxes in {unit}" if d < 6 else "check the flux unit"
    _fail(f"{what} gives a median AB magnitude of {m:.1f}, {'brighter' if m < lo else 'fainter'} than any "
          f"galaxy catalog's; {hint} (set --flux-unit or 'flux_unit:' in a column map)")


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


def _column_unit(src: _Source, ref: str) -> str | None:
    """The unit of a column (of the vector column of ``NAME[k]``); None when it has none."""
    col_unit = src.unit(ref.split("[")[0]) if _INDEXED.match(ref) else src.unit(ref)
    return None if col_unit in ("", "None") else col_unit


def _flux_factor(src: _Source, part: _Part, spec: _BandSpec, flux_unit: str | None,
                 notes: list[str]) -> tuple[float, str]:
    label = src.label
    col_unit = _column_unit(src, part.value)
    if spec.zero_point is not None:
        if col_unit is not None and _is_flux_unit(col_unit):
            _fail(f"{label}: column {part.value} has unit '{col_unit}' but band {spec.name} has a "
                  "zero_point; drop one of them")
        return 10.0 ** (0.4 * (MAG_ZP - spec.zero_point)), f"AB zero point {spec.zero_point:g}"
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
    _fail(f"{label}: flux column {part.value} (band {spec.name}) has no unit; give it with --flux-unit "
          f"(flux_unit=, or 'flux_unit:'/'zero_point:' in a column map): nanomaggy, maggy, uJy, Jy …")


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
              f"{AGREE_TOL_MAG:g} mag (median m(flux) − mag = {med:+.3f}); check the flux unit or drop one "
              "column")


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
                         f"[{z_min:g}, {z_max:g}] (min {float(np.nanmin(z)):.4g}, max "
                         f"{float(np.nanmax(z)):.4g})")
        if nan.any():
            parts.append(f"{int(nan.sum())} of {z.size} have no z_spec")
        _fail(f"{label}: " + "; ".join(parts) + "; cut the catalog or change the model's z range")
