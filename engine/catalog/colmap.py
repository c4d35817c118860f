"""Column maps (YAML/JSON file or dict): loading, checking, and the band specs they name.

The keys and their meaning are documented in docs/catalogs.md, "Column maps".
"""
from __future__ import annotations

import difflib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from engine.catalog.bands import _BandSpec, _Part, _resolve_band, known_band_names
from engine.catalog.messages import _fail, _is_number, _one_line, _short_list
from engine.catalog.sources import _Source

_MAP_TOP_KEYS = {"bands", "z_spec", "flux_unit", "table"}
_MAP_BAND_KEYS = {"mag", "mag_err", "flux", "flux_err", "flux_ivar", "flux_unit", "extinction", "ab_offset",
                  "zero_point"}


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
            what = ("band" if known_band_names().get(str(dk.key).lower()) or str(dk.key).endswith(".ecsv")
                    else "key")
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
            _fail(f"{label}: 'bands' must map band names to {{mag: …, mag_err: …}} / "
                  "{flux: …, flux_err: …}")
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
                _fail(f"{label}: band '{b}': ab_offset must be a number of magnitudes, got "
                      f"{spec['ab_offset']!r}")
            _check_zero_point(label, b, spec)
            if "extinction" in spec and not (isinstance(spec["extinction"], str)
                                             or _is_number(spec["extinction"])):
                _fail(f"{label}: band '{b}': extinction must be a number or a column name")
    if "z_spec" in cmap and cmap["z_spec"] is not None and not isinstance(cmap["z_spec"], str):
        _fail(f"{label}: z_spec must be a column name or null, got {cmap['z_spec']!r}")
    return cmap, label


def _check_zero_point(label: str, band: str, spec: Mapping[str, Any]) -> None:
    """A band's ``zero_point`` is a number, for a flux column, and excludes ``flux_unit``."""
    if "zero_point" not in spec:
        return
    if not _is_number(spec["zero_point"]):
        _fail(f"{label}: band '{band}': zero_point must be the AB magnitude of a flux of 1, got "
              f"{spec['zero_point']!r}")
    if "flux" not in spec:
        _fail(f"{label}: band '{band}': zero_point applies to a 'flux' column, and the band has none")
    if "flux_unit" in spec:
        _fail(f"{label}: band '{band}' has both flux_unit and zero_point; give one of them")


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
        if "zero_point" in entry:
            spec.zero_point = float(entry["zero_point"])
            spec.flux_unit = entry.get("flux_unit")
        specs[band] = spec
    if wanted is None:
        return list(specs.values())
    missing = [b for b, _ in wanted if b not in specs]
    if missing:
        hints = [f"{b} → {c[0]}?" for b in missing
                 if (c := difflib.get_close_matches(b, list(specs), n=1, cutoff=0.6))]
        _fail(f"{label}: band(s) {', '.join(missing)} not in {maplabel} (it maps {_short_list(list(specs))})"
              + (f"; did you mean {', '.join(hints)}" if hints else ""))
    return [specs[b] for b, _ in wanted]
