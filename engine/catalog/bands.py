"""Band names (speclite filter names or ECSV filter files) and the per-band column specs."""
from __future__ import annotations

import difflib
import importlib.util
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.catalog.messages import _fail

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
    alias = sedpy_aliases().get(name.lower())
    if alias is not None:
        return alias, alias
    if name.lower().endswith(".ecsv") or os.sep in name or "/" in name:
        p = Path(name)
        if not p.is_file():
            _fail(f"{label}: filter file '{name}' for a band does not exist")
        return p.stem, str(p)
    close = difflib.get_close_matches(name.lower(), list(known), n=6, cutoff=0.6)
    same = [c for c in close if c.split("-")[-1] == name.lower().split("-")[-1]]
    close = (same + [c for c in close if c not in same])[:3] or letter_candidates(name)[:3]
    hint = f"; did you mean {', '.join(repr(known[c]) for c in close)}?" if close else ""
    _fail(f"{label}: unknown band '{name}' (not a speclite filter name nor an ECSV filter file){hint}")
    raise AssertionError  # unreachable


#: Filter families tried first when a bare filter letter (``u``, ``r`` …) is to be named.
_FAMILY_ORDER = ("sdss2010", "lsst2023", "decam2014", "hsc2017", "panstarrs", "cfht_megacam", "bessell",
                 "twomass", "galex", "wise2010")


def letter_candidates(letter: str) -> list[str]:
    """speclite names whose filter letter (after the last '-') is ``letter`` (any case), the
    common survey systems first: ``u`` → sdss2010-u, lsst2023-u, decam2014-u …"""
    known = known_band_names()
    low = letter.strip().lower()
    if not low or "-" in low:
        return []
    hits = [v for k, v in known.items() if k.split("-")[-1] == low]

    def rank(v: str) -> tuple[int, str]:
        fam = v.rsplit("-", 1)[0]
        return (_FAMILY_ORDER.index(fam) if fam in _FAMILY_ORDER else len(_FAMILY_ORDER), v)

    return sorted(hits, key=rank)


def filter_letter(band: str) -> str:
    """The filter letter of a speclite name (``sdss2010-u`` → ``u``, ``twomass-Ks`` → ``Ks``)."""
    return band.rsplit("-", 1)[-1]


#: sedpy filter families (Johnson 2019, ascl:1905.026) → (speclite family, {sedpy suffix: speclite letter}).
_SEDPY = {
    "sdss": ("sdss2010", {"u0": "u", "g0": "g", "r0": "r", "i0": "i", "z0": "z"}),
    "galex": ("galex", {"fuv": "fuv", "nuv": "nuv"}),
    "twomass": ("twomass", {"j": "J", "h": "H", "ks": "Ks"}),
    "wise": ("wise2010", {"w1": "W1", "w2": "W2", "w3": "W3", "w4": "W4"}),
    "decam": ("decam2014", {"u": "u", "g": "g", "r": "r", "i": "i", "z": "z", "y": "Y"}),
    "bessell": ("bessell", {"u": "U", "b": "B", "v": "V", "r": "R", "i": "I"}),
    "hsc": ("hsc2017", {"g": "g", "r": "r", "i": "i", "z": "z", "y": "y"}),
}


def sedpy_aliases() -> dict[str, str]:
    """sedpy filter names, lower-cased (``sdss_r0``, ``galex_nuv``, ``twomass_ks`` …) → speclite names."""
    known = known_band_names()
    out = {}
    for fam, (sfam, letters) in _SEDPY.items():
        for suffix, letter in letters.items():
            canon = known.get(f"{sfam}-{letter}".lower())
            if canon is not None:
                out[f"{fam}_{suffix}"] = canon
    return out


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


def _same_filter_letter(band: str, candidates: Sequence[str]) -> list[str]:
    """Candidates naming the same filter in another system (sdss2010-r ↔ sdss2010noatm-r)."""
    suffix = band.split("-")[-1].lower()
    return [c for c in candidates if c.split("-")[-1].lower() == suffix and c.lower() != band.lower()]


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
    zero_point: float | None = None  # AB magnitude of a flux of 1 in the column's units (counts/s …)
