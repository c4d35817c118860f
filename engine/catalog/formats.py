"""Catalog file formats: one reader per format behind a small registry (after astropy's
``io.registry``): :func:`register_reader` adds a reader under a format name and file suffixes,
:func:`get_reader` / :func:`detect_format` look one up."""
from __future__ import annotations

import csv
import gzip
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from engine.catalog.messages import _fail, _one_line, _short_list
from engine.catalog.sources import (
    _h5_is_column,
    _H5GroupSource,
    _ParquetSource,
    _Source,
    _TableSource,
)
from engine.errors import CatalogError

Opener = Callable[[Path, str, Any], _Source]
_COMPRESSED = (".gz", ".bz2", ".xz")


@dataclass(frozen=True)
class Reader:
    """A catalog reader registered under a format name.

    Attributes
    ----------
    name : str
        Format name (``fits``, ``ecsv`` …), as passed in ``format=``.
    title : str
        Name used in messages (``FITS``, ``Parquet`` …).
    suffixes : tuple of str
        File suffixes (lower case, with the dot) that select this reader.
    open : callable
        ``open(path, label, table)`` returns a column source; ``table`` is the ``table:`` entry of a
        column map (HDU or HDF5 path) or None.
    compressed : bool
        Whether a ``.gz``/``.bz2``/``.xz`` compressed file may be read.
    """

    name: str
    title: str
    suffixes: tuple[str, ...]
    open: Opener
    compressed: bool = True


_READERS: dict[str, Reader] = {}
_ALIASES: dict[str, str] = {}
_SUFFIXES: dict[str, str] = {}


def register_reader(name: str, title: str, suffixes: Sequence[str], opener: Opener, *,
                    aliases: Sequence[str] = (), compressed: bool = True) -> Reader:
    """Register ``opener`` as the reader of format ``name`` (also selected by ``suffixes`` and
    ``aliases``); ``ValueError`` if the name, an alias or a suffix is taken."""
    key = name.lower()
    taken = [k for k in (key, *aliases) if k in _READERS or k in _ALIASES]
    taken += [s for s in suffixes if s.lower() in _SUFFIXES]
    if taken:
        raise ValueError(f"catalog format name(s)/suffix(es) already registered: {', '.join(taken)}")
    reader = Reader(key, title, tuple(s.lower() for s in suffixes), opener, compressed)
    _READERS[key] = reader
    for a in aliases:
        _ALIASES[a.lower()] = key
    for s in reader.suffixes:
        _SUFFIXES[s] = key
    return reader


def get_reader(fmt: str) -> Reader:
    """The reader of format ``fmt`` (a name or alias); astropy's ``ascii.*`` formats are read by
    astropy.  ``KeyError`` for an unknown format."""
    f = fmt.lower().lstrip(".")
    f = _ALIASES.get(f, f)
    if f in _READERS:
        return _READERS[f]
    if f.startswith("ascii"):
        return Reader(f, f, (), partial(_open_astropy, astropy_format=f))
    raise KeyError(fmt)


def format_title(fmt: str) -> str:
    """The name of format ``fmt`` used in messages (``FITS``, ``Parquet`` …; else ``fmt``)."""
    return _READERS[fmt].title if fmt in _READERS else fmt


def detect_format(path: Path, fmt: str | None, label: str) -> str:
    """The format name of ``path``: ``fmt`` if given (name or alias), else from the file suffix
    (after one compression suffix); one-line :class:`CatalogError` if unknown."""
    if fmt is not None:
        try:
            return get_reader(fmt).name
        except KeyError:
            _fail(f"unknown catalog format '{fmt}' for {label}; use one of {', '.join(_READERS)}")
    name = path.name.lower()
    for c in _COMPRESSED:
        if name.endswith(c):
            name = name[: -len(c)]
            break
    suffix = Path(name).suffix
    if suffix in _SUFFIXES:
        reader = _READERS[_SUFFIXES[suffix]]
        if name != path.name.lower() and not reader.compressed:
            _fail(f"unknown catalog format '{path.name}' for {label}: compressed {reader.title} "
                  f"is not supported; decompress it first")
        return reader.name
    _fail(f"unknown catalog format '{suffix or path.name}' for {label}; use one of .fits, .ecsv, "
          f".csv, .hdf5/.h5, .parquet (or pass format=)")
    raise AssertionError



def _open_source(path: Path, label: str, fmt: str, table: Any) -> _Source:
    """Open ``path`` with the reader of format ``fmt`` (a name :func:`detect_format` returned)."""
    return get_reader(fmt).open(path, label, table)


def _reader_error(label: str, fmt: str, exc: BaseException) -> CatalogError:
    text = _one_line(f"{type(exc).__name__}: {exc}")
    if len(text) > 200:
        text = text[:200] + "…"
    return CatalogError(f"cannot read {label} as {format_title(fmt)}: {text}")


def _csv_header_duplicates(path: Path) -> list[str]:
    """Column names appearing more than once in a CSV header (astropy renames them a, a_1 …)."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rt", newline="", errors="replace") as fh:
            for line in fh:
                if line.strip() and not line.lstrip().startswith("#"):
                    names = next(csv.reader([line]))
                    break
            else:
                return []
    except Exception:
        return []
    seen: dict[str, int] = {}
    for n in names:
        n = n.strip()
        seen[n] = seen.get(n, 0) + 1
    return [n for n, c in seen.items() if c > 1]


# ------------------------------------------------------------------------------------------------
# the readers
# ------------------------------------------------------------------------------------------------


def _read_astropy(path: Path, label: str, fmt: str, kwargs: dict[str, Any],
                  dups: Sequence[str] = ()) -> _Source:
    """An astropy ``Table.read`` of ``path`` (warnings silenced) as a column source."""
    from astropy.table import Table

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t = Table.read(str(path), **kwargs)
    except Exception as exc:
        raise _reader_error(label, fmt, exc) from None
    return _TableSource(t, label, dups)


def _open_astropy(path: Path, label: str, table: Any, *, astropy_format: str) -> _Source:
    return _read_astropy(path, label, astropy_format, {"format": astropy_format})


def _open_fits(path: Path, label: str, table: Any) -> _Source:
    kwargs: dict[str, Any] = {"format": "fits", "memmap": not path.name.lower().endswith(".gz")}
    if table is not None:
        kwargs["hdu"] = int(table) if isinstance(table, int) or str(table).isdigit() else table
    else:
        tables = _fits_table_hdus(path)
        if len(tables) > 1:
            _fail(f"{label}: the FITS file holds {len(tables)} tables ({_short_list(tables)}); choose one "
                  f"with 'table:' (HDU name or number) in a column map")
    return _read_astropy(path, label, "fits", kwargs)


def _open_ecsv(path: Path, label: str, table: Any) -> _Source:
    return _read_astropy(path, label, "ecsv", {"format": "ascii.ecsv"})


def _open_csv(path: Path, label: str, table: Any) -> _Source:
    dups = _csv_header_duplicates(path)
    return _read_astropy(path, label, "csv", {"format": "ascii.csv"}, dups)


def _open_parquet_file(path: Path, label: str, table: Any) -> _Source:
    try:
        return _ParquetSource(str(path), label)
    except Exception as exc:
        raise _reader_error(label, "parquet", exc) from None


def _fits_table_hdus(path: Path) -> list[str]:
    """Names (or numbers) of the table HDUs of a FITS file; [] if it cannot be opened (the reader
    then reports the problem)."""
    try:
        from astropy.io import fits

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with fits.open(path, memmap=True, lazy_load_hdus=True) as hl:
                return [h.name or str(i) for i, h in enumerate(hl)
                        if isinstance(h, (fits.BinTableHDU, fits.TableHDU))]
    except Exception:
        return []


def _open_hdf5(path: Path, label: str, table: Any) -> _Source:
    import h5py
    from astropy.table import Table

    try:
        f = h5py.File(str(path), "r")
    except Exception as exc:
        raise _reader_error(label, "hdf5", exc) from None
    try:
        if table is not None:
            key = str(table)
            if key not in f:
                cands = _h5_candidates(f)
                _fail(f"{label}: no HDF5 table '{key}' (tables found: {_short_list([c for _, c in cands])})")
            obj = f[key]
            kind = "table" if isinstance(obj, h5py.Dataset) and obj.dtype.names else (
                "group" if isinstance(obj, h5py.Group) else None)
            if kind is None:
                _fail(f"{label}: HDF5 object '{key}' is neither a table dataset nor a group of columns")
            choice = (kind, key)
        else:
            cands = _h5_candidates(f)
            if not cands:
                _fail(f"{label}: no table in the HDF5 file (no compound dataset and no group of "
                      f"equal-length 1-d datasets)")
            if len(cands) > 1:
                _fail(f"{label}: the HDF5 file holds {len(cands)} tables "
                      f"({_short_list([c for _, c in cands])}); choose one with 'table:' in a column map")
            choice = cands[0]
        if choice[0] == "table":
            f.close()
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    t = Table.read(str(path), format="hdf5", path=choice[1])
            except Exception as exc:
                raise _reader_error(label, "hdf5", exc) from None
            return _TableSource(t, label)
        src = _H5GroupSource(f, f[choice[1]], label)
        if not src.names:
            _fail(f"{label}: HDF5 group '{choice[1]}' has no 1-d datasets")
        lens = {f[choice[1]][k].shape[0] for k in src.names}
        if len(lens) > 1:
            _fail(f"{label}: datasets in HDF5 group '{choice[1]}' have different lengths {sorted(lens)}")
        return src
    except BaseException:
        try:
            f.close()
        except Exception:
            pass
        raise


def _h5_candidates(f) -> list[tuple[str, str]]:
    import h5py

    out: list[tuple[str, str]] = []

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset) and obj.dtype.names and not name.endswith("__table_column_meta__"):
            out.append(("table", name))
        elif isinstance(obj, h5py.Group):
            cols = [v for v in obj.values() if _h5_is_column(v)]
            if cols and len({c.shape[0] for c in cols}) == 1:
                out.append(("group", name))

    cols = [v for v in f.values() if _h5_is_column(v)]
    if cols and len({c.shape[0] for c in cols}) == 1:
        out.append(("group", "/"))
    f.visititems(visit)
    return out


register_reader("fits", "FITS", (".fits", ".fit", ".fts"), _open_fits, aliases=("fit", "fts"))
register_reader("ecsv", "ECSV", (".ecsv",), _open_ecsv)
register_reader("csv", "CSV", (".csv",), _open_csv)
register_reader("hdf5", "HDF5", (".hdf5", ".h5", ".hdf", ".he5"), _open_hdf5, aliases=("h5", "hdf"),
                compressed=False)
register_reader("parquet", "Parquet", (".parquet", ".pq", ".parq"), _open_parquet_file,
                aliases=("pq", "parq"), compressed=False)
