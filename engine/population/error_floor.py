"""A systematic error floor added to a catalog's flux errors.

Catalog errors count photon noise only; an SPS and its calibration are not better than a few per cent
(e.g. Conroy 2013), so per-galaxy SED codes add a floor of 2--5 % in quadrature.  With a floor ``e`` (mag)
in a band, a flux error becomes::

    sigma_f' = sqrt(sigma_f**2 + (0.4 ln 10 * e * |f|)**2)

(``0.4 ln 10 * e`` is the relative flux error of ``e`` mag).  It is applied before the noise model is
fitted, so the predicted photometry gets the same extra scatter.  ``--error-floor 0.02`` sets one floor
for every band, ``--error-floor sdss2010-u=0.05,sdss2010-g=0.02`` per band (bands not named: 0).
"""
from __future__ import annotations

import math

import numpy as np

from engine.errors import PopsedError

__all__ = ["apply_error_floor", "error_floors", "parse_error_floor"]


def _value(text: str, what: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise PopsedError(f"--error-floor: cannot parse {what} {text.strip()!r} as a magnitude") from None
    if not (math.isfinite(v) and v >= 0):
        raise PopsedError(f"--error-floor must be >= 0 (mag), got {text.strip()}")
    return v


def parse_error_floor(spec) -> float | dict[str, float]:
    """``spec`` (a number, ``"0.02"``, ``"B1=0.05,B2=0.02"`` or a dict) -> one floor or floors per band."""
    if spec is None:
        return 0.0
    if isinstance(spec, dict):
        return {str(k): _value(str(v), f"the floor of {k}") for k, v in spec.items()}
    if isinstance(spec, (int, float)):
        return _value(str(spec), "the floor")
    text = str(spec).strip()
    if "=" not in text:
        return _value(text, "the floor")
    out = {}
    for part in text.split(","):
        if not part.strip():
            continue
        band, eq, v = part.partition("=")
        if not eq or not band.strip():
            raise PopsedError(f"--error-floor: cannot parse {part.strip()!r}: expected BAND=MAG")
        out[band.strip()] = _value(v, f"the floor of {band.strip()}")
    return out


def error_floors(spec, cat_bands, model_bands) -> dict[str, float]:
    """The floor (mag) of each of the forward model's bands; per-band floors may name a band as the
    catalog or as the forward model names it."""
    floor = parse_error_floor(spec)
    model_bands = [str(b) for b in model_bands]
    if not isinstance(floor, dict):
        return {b: float(floor) for b in model_bands}
    cat_bands = [str(b) for b in cat_bands]
    out = {b: 0.0 for b in model_bands}
    for band, v in floor.items():
        if band in model_bands:
            out[band] = v
        elif band in cat_bands:
            out[model_bands[cat_bands.index(band)]] = v
        else:
            raise PopsedError(f"--error-floor names band {band!r}, which is not among the fitted bands "
                              f"{model_bands}")
    return out


def apply_error_floor(flux: np.ndarray, flux_err: np.ndarray, floors) -> np.ndarray:
    """``flux_err`` (N, B) with the floors (mag, (B,)) added in quadrature (module docstring)."""
    floors = np.asarray(floors, dtype=np.float64)
    if not np.any(floors > 0):
        return flux_err
    flux = np.asarray(flux, dtype=np.float64)
    rel = 0.4 * math.log(10.0) * floors
    return np.sqrt(np.asarray(flux_err, dtype=np.float64) ** 2 + (rel * np.abs(flux)) ** 2)
