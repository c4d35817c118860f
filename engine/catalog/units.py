"""Flux units: nanomaggies (the common flux space of a :class:`~engine.catalog.Catalog`), maggies
and the conversion factor of any spectral flux density unit to nanomaggies.

AB magnitudes relate to nanomaggies by ``m = 22.5 − 2.5 log10 f`` (the AB system of Oke & Gunn
1983; maggies as in Blanton & Roweis 2007).  See docs/catalogs.md, "Flux units".
"""
from __future__ import annotations

import math
from typing import Any

#: AB zero point of nanomaggies: m = MAG_ZP − 2.5 log10(f / nmgy).
MAG_ZP = 22.5
_POGSON = 2.5 / math.log(10.0)  # 1.0857…: σ_m = _POGSON σ_f / f


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

    ``unit`` is a string or an astropy unit; accepted names are listed in
    docs/catalogs.md, "Flux units".
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
