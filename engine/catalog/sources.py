"""Uniform column access (names, units, float64 arrays) over astropy tables, HDF5 groups of 1-d
datasets and Parquet files; :mod:`engine.catalog.formats` opens them."""
from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from engine.catalog.messages import _fail

_INDEXED = re.compile(r"^(.*)\[(\d+)\]$")


class _Source:
    """Column access: names, units, numeric arrays (float64, NaN for masked/null)."""

    label: str
    names: list[str]
    nrows: int
    dup_names: list[str]

    def unit(self, name: str) -> str | None:  # pragma: no cover - interface
        raise NotImplementedError

    def raw(self, name: str) -> Any:  # pragma: no cover - interface
        raise NotImplementedError

    def width(self, name: str) -> int:
        """Length of the vectors of a vector column (``MAGGIES[8]`` → 8); 0 for a scalar column."""
        return 0

    def meta(self) -> dict[str, Any]:
        """The table's metadata with plain (JSON-able) values, e.g. the ``selection`` of a mock."""
        return {}

    def close(self) -> None:
        pass

    # -- shared logic --------------------------------------------------------------------
    def find(self, ref: str) -> str | None:
        """The source's column (or ``NAME[k]``) for a reference; exact, then case-insensitive."""
        m = _INDEXED.match(ref)
        base, idx = (m.group(1), m.group(2)) if m else (ref, None)
        if base in self.names:
            hit = base
        else:
            low = [n for n in self.names if n.lower() == base.lower()]
            if len(low) != 1:
                return None
            hit = low[0]
        return hit if idx is None else f"{hit}[{idx}]"

    def array(self, ref: str) -> np.ndarray:
        m = _INDEXED.match(ref)
        base, idx = (m.group(1), int(m.group(2))) if m else (ref, None)
        data = self.raw(base)
        arr = _to_float(data, self.label, ref if idx is None else base)
        if idx is None:
            if arr.ndim != 1:
                _fail(f"{self.label}: column {base} holds vectors of shape {arr.shape[1:]}; "
                      f"pick one element with {base}[k] in a column map")
            return arr
        if arr.ndim != 2 or idx >= arr.shape[1]:
            _fail(f"{self.label}: column {ref} does not exist ({base} has shape {arr.shape[1:]})")
        return np.ascontiguousarray(arr[:, idx])


def _to_float(data: Any, label: str, name: str) -> np.ndarray:
    """float64 copy of a column; masked → NaN; CatalogError for non-numeric data."""
    mask = None
    if np.ma.isMaskedArray(data):
        mask = np.ma.getmaskarray(data)
        data = np.ma.getdata(data)
    try:
        arr = np.asarray(data)
    except Exception:
        _fail(f"{label}: column {name} is not numeric ({type(data).__name__})")
    kind = arr.dtype.kind
    if kind in "iuf":
        out = arr.astype(np.float64, copy=False)  # never modified in place below
    elif kind in "OUS":
        out = _parse_strings(arr, label, name)
    else:
        _fail(f"{label}: column {name} is not numeric (dtype {arr.dtype})")
    if mask is not None and mask.any():
        out = np.where(mask.reshape(out.shape), np.nan, out)
    return out


def _parse_strings(arr: np.ndarray, label: str, name: str) -> np.ndarray:
    """Numbers stored as text (e.g. a CSV column with a stray word): parse or refuse with a count."""
    flat = arr.reshape(-1)
    uniq, inv = np.unique(flat.astype(str), return_inverse=True)
    vals = np.empty(len(uniq), dtype=np.float64)
    bad: list[str] = []
    nbad = 0
    counts = np.bincount(inv.reshape(-1), minlength=len(uniq))
    for k, s in enumerate(uniq):
        t = s.strip()
        if t in ("", "--", "null", "None", "NULL"):
            vals[k] = np.nan
            continue
        try:
            vals[k] = float(t)
        except ValueError:
            vals[k] = np.nan
            nbad += int(counts[k])
            if len(bad) < 1:
                bad.append(t[:20])
    if nbad:
        _fail(f"{label}: column {name} is not numeric: {nbad} of {flat.size} values are not "
              f"numbers (e.g. {bad[0]!r})")
    return vals[inv].reshape(arr.shape)


class _TableSource(_Source):
    def __init__(self, table, label: str, dup_names: Sequence[str] = ()):
        self.t = table
        self.label = label
        self.names = list(table.colnames)
        self.nrows = len(table)
        self.dup_names = list(dup_names)

    def unit(self, name):
        u = getattr(self.t[name], "unit", None)
        return None if u is None else str(u)

    def raw(self, name):
        return self.t[name]

    def width(self, name):
        shape = getattr(self.t[name], "shape", ())
        return int(shape[1]) if len(shape) == 2 else 0

    def meta(self):
        plain = (str, int, float, bool)
        return {str(k): v for k, v in getattr(self.t, "meta", {}).items()
                if isinstance(v, plain) or (isinstance(v, list) and all(isinstance(x, plain) for x in v))}


class _H5GroupSource(_Source):
    def __init__(self, h5file, group, label: str):
        self.f = h5file
        self.g = group
        self.label = label
        self.names = [k for k, v in group.items() if _h5_is_column(v)]
        lens = {group[k].shape[0] for k in self.names}
        self.nrows = lens.pop() if len(lens) == 1 else 0
        self.dup_names = []

    def unit(self, name):
        attrs = self.g[name].attrs
        for key in ("unit", "units", "UNIT"):
            if key in attrs:
                v = attrs[key]
                return v.decode() if isinstance(v, bytes) else str(v)
        return None

    def raw(self, name):
        return self.g[name][()]

    def width(self, name):
        shape = self.g[name].shape
        return int(shape[1]) if len(shape) == 2 else 0

    def close(self):
        self.f.close()


def _h5_is_column(obj) -> bool:
    import h5py

    return (isinstance(obj, h5py.Dataset) and obj.dtype.names is None and 1 <= obj.ndim <= 2
            and not obj.name.endswith("__table_column_meta__"))


class _ParquetSource(_Source):
    def __init__(self, path: str, label: str):
        import pyarrow.parquet as pq

        self.pf = pq.ParquetFile(path, memory_map=False)
        self.label = label
        schema = self.pf.schema_arrow
        self.names = list(schema.names)
        seen: dict[str, int] = {}
        for n in self.names:
            seen[n] = seen.get(n, 0) + 1
        self.dup_names = [n for n, c in seen.items() if c > 1]
        self.nrows = self.pf.metadata.num_rows
        self._units = _parquet_units(schema)
        self._types = {n: schema.field(i).type for i, n in enumerate(self.names)}
        self.groups: list[int] | None = None  # read only these row groups (streaming); None = all

    def restrict(self, groups: Sequence[int]) -> _ParquetSource:
        """A view of the same file that reads only row groups ``groups`` (shares the open file)."""
        view = object.__new__(type(self))
        view.__dict__.update(self.__dict__)
        view.groups = [int(g) for g in groups]
        view.nrows = int(sum(self.pf.metadata.row_group(g).num_rows for g in view.groups))
        return view

    def unit(self, name):
        return self._units.get(name)

    def width(self, name):
        import pyarrow as pa

        typ = self._types[name]
        return int(typ.list_size) if pa.types.is_fixed_size_list(typ) else 0

    def raw(self, name):
        import pyarrow as pa

        typ = self._types[name]
        if self.groups is None:
            col = self.pf.read(columns=[name], use_threads=False).column(0)
        else:
            col = self.pf.read_row_groups(self.groups, columns=[name], use_threads=False).column(0)
        if pa.types.is_fixed_size_list(typ) or pa.types.is_list(typ):
            try:
                return np.asarray(col.to_pylist(), dtype=np.float64)
            except Exception:
                _fail(f"{self.label}: column {name} holds lists of unequal length or non-numbers")
        if pa.types.is_floating(typ) or pa.types.is_integer(typ):
            if col.null_count:
                col = col.cast(pa.float64())
            return col.to_numpy()
        if pa.types.is_string(typ) or pa.types.is_large_string(typ):
            return np.asarray(col.to_pylist(), dtype=object).astype(str)
        _fail(f"{self.label}: column {name} is not numeric (Parquet type {typ})")

    def close(self):
        try:
            self.pf.close()
        except Exception:  # pragma: no cover
            pass


def _parquet_units(schema) -> dict[str, str]:
    """Column units from astropy's ``table_meta_yaml`` or pyarrow field metadata ``unit``."""
    units: dict[str, str] = {}
    meta = schema.metadata or {}
    if b"table_meta_yaml" in meta:
        try:
            from astropy.table import meta as tmeta

            hdr = tmeta.get_header_from_yaml(meta[b"table_meta_yaml"].decode().splitlines())
            for d in hdr.get("datatype", []):
                if d.get("unit"):
                    units[d["name"]] = str(d["unit"])
        except Exception:
            pass
    for f in schema:
        if f.metadata and b"unit" in f.metadata:
            units.setdefault(f.name, f.metadata[b"unit"].decode(errors="replace"))
    return units
