"""Photometry column names beyond ``mag_<band>``/``flux_<band>``: SDSS CAS magnitudes
(``modelMag_u``/``modelMagErr_u``), columns named by a filter letter (``u``/``err_u``,
``MAG_U``/``MAGERR_U``) and vector columns (``MAGGIES[8]``/``MAGGIES_IVAR``).

Letters and vectors are used only for bands asked for by name (``--bands sdss2010-u,…``): a letter
or a vector element does not say which photometric system it belongs to.  See docs/catalogs.md,
"Finding the band columns".
"""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from engine.catalog.bands import _FAMILY_ORDER, filter_letter, known_band_names
from engine.catalog.messages import _fail, _short_list
from engine.catalog.sources import _Source
from engine.catalog.units import _is_flux_unit

#: SDSS CAS magnitude types (PhotoObj columns, Stoughton et al. 2002), in order of preference when a
#: table holds several: model magnitudes are the SDSS recommendation for galaxy colours.
CAS_TYPES = ("model", "cmodel", "petro", "psf", "fiber", "fiber2")

#: Vector columns preferred when several fit the bands asked for (lower-cased names).
VECTOR_PREFERENCE = ("maggies", "modelflux", "cmodelflux", "flux", "mag")

_CAS = {f"{t}mag{e}_": (t, role) for t in CAS_TYPES for e, role in (("", "value"), ("err", "err"))}
_MAG = re.compile(r"mag(?!gie)")


def classify_cas(low: str) -> tuple[str, str, str, str] | None:
    """``(band_low, "mag", role, type)`` for a lower-cased SDSS CAS magnitude column
    (``modelmag_u``, ``petromagerr_r`` …); None otherwise."""
    for prefix, (typ, role) in _CAS.items():
        rest = low[len(prefix):]
        if low.startswith(prefix) and len(rest) == 1 and rest in "ugriz":
            return f"sdss2010-{rest}", "mag", role, typ
    return None


def cas_columns_to_skip(names: Sequence[str]) -> tuple[set[str], str | None]:
    """SDSS CAS magnitude columns of the less preferred types (only one type is read) and a note."""
    types = {n: c[3] for n in names if (c := classify_cas(n.lower())) is not None}
    if len(set(types.values())) < 2:
        return set(), None
    best = min(types.values(), key=CAS_TYPES.index)
    skip = {n for n, t in types.items() if t != best}
    used = next(n for n, t in types.items() if t == best)
    return skip, (f"SDSS magnitudes: using {used.rsplit('_', 1)[0]}_*, ignoring "
                  f"{_short_list(sorted(skip), 6)} (choose others with a column map)")


def _letter_pairs(letter: str) -> list[tuple[str, str, list[str]]]:
    """(kind, value column, error columns) tried, lower-cased, for a band named by its filter letter."""
    L = letter.lower()
    return [
        ("mag", f"mag_{L}", [f"magerr_{L}", f"mag_err_{L}", f"mag_{L}_err", f"err_mag_{L}"]),
        ("flux", f"flux_{L}", [f"fluxerr_{L}", f"flux_err_{L}", f"flux_{L}_err", f"flux_ivar_{L}"]),
        ("?", L, [f"err_{L}", f"{L}_err", f"e_{L}", f"{L}err", f"{L}_sigma", f"sigma_{L}"]),
    ]


def letter_columns(src: _Source, missing: Sequence[str], wanted: Sequence[str],
                   notes: list[str]) -> dict[str, dict[tuple[str, str], list[str]]]:
    """Columns of bands asked for that are named by their filter letter only (``u``/``err_u``,
    ``MAG_U``/``MAGERR_U``): band → {(kind, role): [column]}, as the convention matching returns.

    A band is matched only when no other band asked for has the same letter, and only by a value
    column *with* an error column (a lone ``z`` is a redshift more often than a magnitude)."""
    low = {}
    for n in src.names:
        low.setdefault(n.lower(), []).append(n)
    letters = [filter_letter(b).lower() for b in wanted]
    found: dict[str, dict[tuple[str, str], list[str]]] = {}
    for band in missing:
        L = filter_letter(band).lower()
        if "-" not in band or letters.count(L) != 1:
            continue
        for kind, value, errs in _letter_pairs(L):
            err = next((e for e in errs if len(low.get(e, ())) == 1), None)
            if len(low.get(value, ())) != 1 or err is None:
                continue
            v, e = low[value][0], low[err][0]
            if kind == "?":
                kind = "flux" if _is_flux_unit(src.unit(v)) else "mag"
            role = "ivar" if "ivar" in err else "err"
            roles = found.setdefault(band, {})
            if (kind, "value") not in roles:
                roles[(kind, "value")] = [v]
                roles[(kind, role)] = [e]
                notes.append(f"{band}: columns {v} ± {e} matched by the filter letter "
                             f"'{filter_letter(band)}'")
    return found


def _vector_pairs(src: _Source) -> list[tuple[str, int, str | None, str | None]]:
    """Vector columns with an error or inverse-variance partner of the same length:
    (name, length, error column, inverse-variance column)."""
    out = []
    for name in src.names:
        w = src.width(name)
        low = name.lower()
        if w < 2 or low.endswith(("_ivar", "_err", "err", "_error")):
            continue
        ivar = src.find(f"{name}_ivar")
        err = src.find(f"{name}_err") or src.find(f"{name}err")
        ivar = ivar if ivar is not None and src.width(ivar) == w else None
        err = err if err is not None and src.width(err) == w else None
        if ivar or err:
            out.append((name, w, err, ivar))
    return out


def vector_columns(src: _Source, label: str, wanted: Sequence[str],
                   notes: list[str]) -> dict[str, dict[tuple[str, str], list[str]]] | None:
    """Bands asked for read from the elements of one vector column (``MAGGIES[k]`` ±
    ``MAGGIES_IVAR[k]`` for the k-th band asked for); None if the table has no vector photometry."""
    pairs = _vector_pairs(src)
    if not pairs:
        return None
    fit = [p for p in pairs if p[1] == len(wanted)]
    if not fit:
        _fail(f"{label}: no columns for band(s) {', '.join(wanted)}; vector column(s) "
              f"{', '.join(f'{n}[{w}]' for n, w, _, _ in pairs)} do not have one element per band asked for "
              f"({len(wanted)}): name every band of the vector, in order, with --bands, or pick elements "
              f"with a column map, e.g. bands: {{{wanted[0]}: {{flux: \"{pairs[0][0]}[0]\", "
              f"{'flux_err' if pairs[0][2] else 'flux_ivar'}: \"{pairs[0][2] or pairs[0][3]}[0]\"}}}}")
    if len(fit) > 1:
        pref = [p for name in VECTOR_PREFERENCE for p in fit if p[0].lower() == name]
        if not pref:
            _fail(f"{label}: several vector columns fit the {len(wanted)} bands asked for "
                  f"({', '.join(p[0] for p in fit)}); choose one with a column map, e.g. "
                  f"bands: {{{wanted[0]}: {{flux: \"{fit[0][0]}[0]\", ...}}}}")
        fit = pref
    name, _, err, ivar = fit[0]
    kind = "mag" if _MAG.search(name.lower()) else "flux"
    partner, role = (err, "err") if err is not None else (ivar, "ivar")
    others = [p[0] for p in pairs if p[0] != name]
    notes.append(f"bands {_short_list(list(wanted), 3)} from vector columns {name} ± {partner} (element k = "
                 f"k-th band asked for)" + (f"; not used: {', '.join(others)}" if others else ""))
    return {b: {(kind, "value"): [f"{name}[{k}]"], (kind, role): [f"{partner}[{k}]"]}
            for k, b in enumerate(wanted)}


def bands_hint(pairs: Sequence[str]) -> str:
    """``--bands`` naming the filter letters of photometry-like column pairs (``u/err_u`` …) in the
    first common survey system that has them all; "" if there is none."""
    letters = []
    for p in pairs:
        v = p.split("/")[0].lower()
        for prefix in ("mag_", "flux_"):
            v = v.removeprefix(prefix)
        letters.append(v)
    known = known_band_names()
    for fam in _FAMILY_ORDER:
        names = [known.get(f"{fam}-{L}") for L in letters]
        if letters and all(names):
            return f"; or pass --bands {','.join(names)}"
    return ""


def merge_found(found: Mapping[str, dict], extra: Mapping[str, dict]) -> dict[str, dict]:
    """The union of two band → {(kind, role): [columns]} maps (``extra`` adds bands only)."""
    out = dict(found)
    for band, roles in extra.items():
        out.setdefault(band, roles)
    return out
