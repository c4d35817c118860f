"""Column conventions: finding the band and spectroscopic-redshift columns of a catalog by name
(``mag_<band>``/``mag_err_<band>``, ``flux_<band>``/``flux_err_<band>`` …), or from a column map.

The conventions are documented in docs/catalogs.md, "Finding the band columns".
"""
from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from engine.catalog.bands import (
    _BandSpec,
    _parse_bands,
    _Part,
    _same_filter_letter,
    known_band_names,
    sedpy_aliases,
)
from engine.catalog.colmap import _specs_from_map
from engine.catalog.conventions import (
    bands_hint,
    cas_columns_to_skip,
    classify_cas,
    letter_columns,
    merge_found,
    vector_columns,
)
from engine.catalog.messages import _fail, _short_list
from engine.catalog.sources import _Source
from engine.catalog.units import _is_flux_unit

#: Names tried (case-insensitively, in this order) for the spectroscopic redshift column.
Z_SPEC_NAMES = ("z_spec", "zspec", "specz", "spec_z", "z_spectro", "zspectro", "redshift")
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
    cas = classify_cas(low)
    if cas is not None:
        return cas[:3]
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


def _discover(src: _Source, lookup: Mapping[str, str],
              skip: set[str] = frozenset()
              ) -> tuple[dict[str, dict[tuple[str, str], list[str]]], list[str], list[str]]:
    """Convention matching: band → {(kind, role): [columns]}, band order, ignored columns."""
    found: dict[str, dict[tuple[str, str], list[str]]] = {}
    order: list[str] = []
    ignored: list[str] = []
    for col in src.names:
        if col in skip:
            continue
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
    """Band specs found by the naming conventions (``wanted``: the bands asked for, or None for every
    band found) and the notes for the report."""
    lookup = {**known_band_names(), **sedpy_aliases(), **{k: Path(v).stem for k, v in extra.items()}}
    skip, cas_note = cas_columns_to_skip(src.names)
    found, order, ignored = _discover(src, lookup, skip)
    notes: list[str] = [cas_note] if cas_note else []
    # raw duplicate names in the file (CSV header, Parquet schema)
    for d in src.dup_names:
        c = _classify(d.lower(), lookup)
        if c:
            _fail(f"{label}: band {lookup[c[0]]} appears twice: column {d} occurs twice in the file")
    if wanted is None:
        if not order:
            _fail_no_bands(src, label, ignored)
        selected = [(b, extra.get(b.lower(), b)) for b in order]
    else:
        found = _find_wanted_elsewhere(src, label, found, [b for b, _ in wanted], notes)
        missing = [b for b, _ in wanted if b not in found]
        if missing:
            _fail_missing_bands(src, label, missing, order)
        selected = list(wanted)
    used = {c for b, _ in selected for cols in found[b].values() for c in cols}
    ignored = [c for c in ignored if c not in used]
    if ignored:
        notes.append(f"ignored columns {_short_list(ignored, 6)}: not speclite band names (use a column map)")
    specs = [_spec_from_roles(label, band, filt, found[band], notes) for band, filt in selected]
    return specs, notes


def _find_wanted_elsewhere(src: _Source, label: str, found: dict, wanted: list[str],
                           notes: list[str]) -> dict:
    """Bands asked for that the conventions did not find: by their filter letter, else (when none
    was found at all) from the elements of a vector column."""
    missing = [b for b in wanted if b not in found]
    if not missing:
        return found
    found = merge_found(found, letter_columns(src, missing, wanted, notes))
    if all(b not in found for b in wanted):
        return merge_found(found, vector_columns(src, label, wanted, notes) or {})
    return found


def _fail_no_bands(src: _Source, label: str, ignored: Sequence[str]) -> NoReturn:
    """Refuse a catalog in which no column follows the conventions, with a hint when some look
    like photometry under other names."""
    hint = ""
    pairs = _photometry_like(src.names)
    if pairs:
        v, e = pairs[0].split("/")
        key = "flux" if "flux" in v.lower() else "mag"
        hint = (f"; columns {_short_list(pairs, 5)} look like photometry: map them to speclite bands "
                f"with a column map (--columns), e.g. bands: {{<band>: {{{key}: {v}, {key}_err: {e}}}}}"
                + bands_hint(pairs))
    elif ignored:
        hint = (f"; columns {_short_list(ignored, 5)} look like photometry but their band names "
                f"are not speclite filters: map them with a column map (--columns)")
    _fail(f"no band columns in {label}: expected mag_<band>/mag_err_<band> or "
          f"flux_<band>/flux_err_<band> with speclite band names (e.g. mag_sdss2010-r), or a "
          f"column map (--columns); columns present: {_short_list(src.names)}{hint}")


def _fail_missing_bands(src: _Source, label: str, missing: Sequence[str], order: Sequence[str]) -> NoReturn:
    """Refuse bands asked for that have no columns, naming the bands found."""
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


def _spec_from_roles(label: str, band: str, filt: str, roles: Mapping[tuple[str, str], list[str]],
                     notes: list[str]) -> _BandSpec:
    """The spec of one band from its columns by (kind, role); refuses duplicates and errors
    without values."""
    for cols in roles.values():
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
    return spec


@dataclass
class ResolvedColumns:
    """The columns a catalog is read from: band specs, notes for the report, the z_spec column (or
    None) and the note saying why there is none."""

    specs: list[_BandSpec]
    notes: list[str]
    z_ref: str | None
    z_note: str | None


def _resolve_columns(src: _Source, label: str, cmap: dict, maplabel: str, bands) -> ResolvedColumns:
    """The band columns (from the column map, else by the naming conventions) and the spec-z column of
    ``src``; one-line errors for anything missing or ambiguous."""
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
    return ResolvedColumns(specs, notes, z_ref, z_note)


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
