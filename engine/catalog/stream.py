"""Streaming big Parquet catalogs: batches, random samples and :class:`CatalogStream` (validated
chunks of row groups, never the whole file in memory)."""
from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.catalog.assemble import (
    _apply_extinction,
    _fraction_fail,
    _one_band,
    _read_z,
)
from engine.catalog.colmap import load_column_map
from engine.catalog.columns import ResolvedColumns, _resolve_columns
from engine.catalog.formats import (
    _open_source,
    _reader_error,
    detect_format,
    format_title,
)
from engine.catalog.messages import _fail, _pct, _short_list
from engine.catalog.model import _hash_file
from engine.catalog.read import _check_path
from engine.catalog.sources import _ParquetSource
from engine.catalog.validate import MIN_MEASURED_FRACTION


def _open_parquet(path, columns: Sequence[str] | None):
    import pyarrow.parquet as pq

    p = Path(path)
    label = str(path)
    if not p.is_file():
        _fail(f"catalog file not found: {label}")
    try:
        pf = pq.ParquetFile(str(p), memory_map=False)
    except Exception as exc:
        raise _reader_error(label, "parquet", exc) from None
    names = pf.schema_arrow.names
    if columns is not None:
        columns = list(columns)
        missing = [c for c in columns if c not in names]
        if missing:
            _fail(f"{label}: column(s) {', '.join(missing)} not in the Parquet file "
                  f"(columns present: {_short_list(names)})")
    return pf, columns, label


def _batch_to_numpy(batch) -> dict[str, np.ndarray]:
    import pyarrow as pa

    out = {}
    for name, col in zip(batch.schema.names, batch.columns, strict=True):
        if (pa.types.is_integer(col.type) or pa.types.is_floating(col.type)) and col.null_count:
            col = col.cast(pa.float64())
        out[name] = col.to_numpy(zero_copy_only=False)
    return out


def iter_parquet_batches(path, columns: Sequence[str] | None = None,
                         batch_rows: int = 65_536) -> Iterator[dict[str, np.ndarray]]:
    """Stream a Parquet file as dicts of numpy arrays of at most ``batch_rows`` rows (nulls → NaN).

    Row groups are read one at a time, so memory is bounded by one row group of the chosen columns
    plus one batch.  Batches do not straddle row groups (a batch may be shorter than ``batch_rows``).
    """
    pf, columns, _ = _open_parquet(path, columns)
    if int(batch_rows) < 1:
        _fail(f"{path}: batch_rows must be ≥ 1, got {batch_rows}")
    try:
        # one row group at a time: pyarrow's reader over the whole file reads ahead (3× the memory here)
        for g in range(pf.num_row_groups):
            for batch in pf.iter_batches(batch_size=int(batch_rows), row_groups=[g], columns=columns,
                                         use_threads=False):
                yield _batch_to_numpy(batch)
    finally:
        pf.close()


def read_parquet_sample(path, n: int, *, seed: int | np.random.Generator | None,
                        columns: Sequence[str] | None = None, return_index: bool = False):
    """``n`` rows drawn uniformly without replacement, read row group by row group.

    Returns a dict of numpy arrays (rows in file order); with ``return_index`` also the row
    numbers.  Only the row groups that hold drawn rows are read, one at a time.
    """
    pf, columns, label = _open_parquet(path, columns)
    try:
        total = pf.metadata.num_rows
        n = int(n)
        if n < 0 or n > total:
            _fail(f"{label}: cannot sample {n} rows from {total}")
        rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        idx = np.sort(rng.choice(total, size=n, replace=False)) if n else np.zeros(0, dtype=np.int64)
        starts = np.zeros(pf.num_row_groups + 1, dtype=np.int64)
        for g in range(pf.num_row_groups):
            starts[g + 1] = starts[g] + pf.metadata.row_group(g).num_rows
        group_of = np.searchsorted(starts, idx, side="right") - 1
        parts: dict[str, list[np.ndarray]] = {}
        for g in np.unique(group_of):
            rows = idx[group_of == g] - starts[g]
            tab = pf.read_row_group(int(g), columns=columns, use_threads=False).take(rows)
            for k, v in _batch_to_numpy(tab.combine_chunks().to_batches()[0]).items() if tab.num_rows else []:
                parts.setdefault(k, []).append(v)
        names = columns if columns is not None else pf.schema_arrow.names
        out = {k: (np.concatenate(parts[k]) if k in parts else np.zeros(0)) for k in names}
    finally:
        pf.close()
    return (out, idx) if return_index else out


#: Parquet catalogs with more rows than this are streamed by ``popsed fit`` (``--stream auto``).
STREAM_MIN_ROWS = 2_000_000
#: Rows per chunk of a :class:`CatalogStream` (consecutive row groups are merged up to this).
STREAM_CHUNK_ROWS = 131_072


@dataclass
class CatalogChunk:
    """Validated rows of one chunk (consecutive row groups) of a streamed catalog.

    Attributes
    ----------
    index : int
        Chunk number (0-based).
    flux, flux_err : ndarray, shape (n, B), float64
        As in :class:`Catalog` (nanomaggies, NaN = no measurement); rows without any measured band
        are dropped.
    z_spec : ndarray, shape (n,), or None
    row_index : ndarray, shape (n,), int64
        Row numbers of these rows in the file (0-based).
    n_file_rows : int
        Rows of the chunk in the file (before dropping rows without a measured band).
    """

    index: int
    flux: np.ndarray
    flux_err: np.ndarray
    z_spec: np.ndarray | None
    row_index: np.ndarray
    n_file_rows: int


def _group_chunks(sizes: Sequence[int], chunk_rows: int) -> list[list[int]]:
    """Consecutive non-empty row groups merged into chunks of at least ``chunk_rows`` rows (the last
    may be shorter)."""
    chunks: list[list[int]] = []
    cur: list[int] = []
    rows = 0
    for g, n in enumerate(sizes):
        if n == 0:
            continue
        cur.append(g)
        rows += n
        if rows >= chunk_rows:
            chunks.append(cur)
            cur, rows = [], 0
    if cur:
        chunks.append(cur)
    return chunks


class _Tally:
    """Per-band counts summed over the chunks of one streaming pass."""

    def __init__(self, n_bands: int):
        self.ok = np.zeros(n_bands, dtype=np.int64)
        self.snr5 = np.zeros(n_bands, dtype=np.int64)
        self.reasons: list[dict[str, int]] = [{} for _ in range(n_bands)]
        self.descs = [""] * n_bands
        self.notes: list[str] = []
        self.kept = 0
        self.z_missing = 0

    def add(self, chunk: CatalogChunk, counts: Sequence[dict]) -> None:
        """Add one chunk and its per-band counts (see ``_one_band``)."""
        for j, c in enumerate(counts):
            self.ok[j] += c["ok"]
            self.descs[j] = c["desc"]
            for r, cnt in c["reasons"].items():
                self.reasons[j][r] = self.reasons[j].get(r, 0) + int(cnt)
        with np.errstate(invalid="ignore", divide="ignore"):
            self.snr5 += np.count_nonzero(chunk.flux >= 5 * chunk.flux_err, axis=0)
        self.kept += chunk.flux.shape[0]
        if chunk.z_spec is not None:
            self.z_missing += int(np.count_nonzero(~np.isfinite(chunk.z_spec)))

    def reasons_of(self, j: int) -> dict[str, int]:
        """Band j's non-zero counts of rows without a measurement, by reason."""
        return {r: c for r, c in self.reasons[j].items() if c}


class CatalogStream:
    """A Parquet catalog read chunk by chunk (one or a few row groups at a time), never whole.

    Every chunk goes through exactly the conversions of :func:`read_catalog` (units, sentinels,
    extinction, flux/magnitude agreement, z_spec sentinels); the whole-catalog checks (≥ 50 %
    measured per band, ≥ ``min_rows`` usable galaxies) are made by :meth:`scan`, which streams the
    file once and raises the same one-line :class:`~engine.errors.CatalogError` messages.  A negative
    error is refused as soon as the chunk holding it is read (its counts then refer to that chunk).

    Use :func:`open_catalog_stream`.  Memory: one chunk of the needed columns (``chunk_rows`` rows;
    a single row group larger than that is read whole, so write big catalogs with row groups of
    ≲ 10⁶ rows).
    """

    def __init__(self, src: _ParquetSource, cols: ResolvedColumns, *, path: str, flux_unit: str | None,
                 min_rows: int, min_fraction: float, chunk_rows: int = STREAM_CHUNK_ROWS):
        specs = cols.specs
        self._src = src
        self._specs = specs
        self._z_ref = cols.z_ref
        self._z_note = cols.z_note
        self._flux_unit = flux_unit
        self._notes = list(cols.notes)
        self.path = path
        self.label = src.label
        self.min_rows = int(min_rows)
        self.min_fraction = float(min_fraction)
        self.bands = tuple(sp.name for sp in specs)
        self.filters = tuple(sp.filter for sp in specs)
        self.n_file_rows = int(src.nrows)
        self.has_z = cols.z_ref is not None
        md = src.pf.metadata
        sizes = [md.row_group(g).num_rows for g in range(md.num_row_groups)]
        self.chunks = _group_chunks(sizes, chunk_rows)
        self.chunk_sizes = [int(sum(sizes[g] for g in c)) for c in self.chunks]
        starts = np.zeros(len(sizes) + 1, dtype=np.int64)
        starts[1:] = np.cumsum(sizes)
        self._group_starts = starts
        self._sha: str | None = None
        self.report: tuple[str, ...] | None = None
        self.n_usable: int | None = None

    def __len__(self) -> int:
        return self.n_file_rows

    @property
    def n_chunks(self) -> int:
        return len(self.chunks)

    @property
    def sha256(self) -> str:
        """SHA-256 of the file's bytes (computed on first use, streaming)."""
        if self._sha is None:
            self._sha = _hash_file(Path(self.path))
        return self._sha

    def read_chunk(self, i: int, counts: list[dict] | None = None,
                   notes: list[str] | None = None) -> CatalogChunk:
        """Chunk ``i``, validated and converted (``counts``: one dict per band, see ``_one_band``)."""
        groups = self.chunks[int(i)]
        src = self._src.restrict(groups)
        n = src.nrows
        B = len(self._specs)
        flux = np.empty((n, B), dtype=np.float64)
        err = np.empty((n, B), dtype=np.float64)
        nts = notes if notes is not None else []
        for j, spec in enumerate(self._specs):
            c: dict = {}
            with np.errstate(all="ignore"):
                _one_band(src, spec, j, flux, err, flux_unit=self._flux_unit, min_fraction=0.0, notes=nts,
                          counts=c)
            if counts is not None:
                counts.append(c)
        any_ok = np.isfinite(flux).any(axis=1)
        z = None
        if self._z_ref is not None:
            z, _ = _read_z(src, self._z_ref)
        local = np.flatnonzero(any_ok)
        rows = np.concatenate([np.arange(self._group_starts[g], self._group_starts[g + 1]) for g in groups])
        if local.size < n:
            flux, err = flux[local], err[local]
            z = None if z is None else z[local]
        return CatalogChunk(int(i), flux, err, z, rows[local], int(n))

    def iter_chunks(self) -> Iterator[CatalogChunk]:
        """All chunks in file order."""
        for i in range(self.n_chunks):
            yield self.read_chunk(i)

    def scan(self, consumers: Sequence = ()) -> tuple[str, ...]:
        """One streaming pass: validate the whole catalog and feed every chunk to ``consumers``.

        Each consumer is a callable ``consumer(chunk: CatalogChunk)``.  Raises the whole-catalog
        refusals of :func:`read_catalog` (fraction measured per band, usable galaxies); returns the
        report (one line per band, then notes), also kept as :attr:`report`.
        """
        tally = _Tally(len(self._specs))
        for i in range(self.n_chunks):
            counts: list[dict] = []
            chunk = self.read_chunk(i, counts, tally.notes)
            tally.add(chunk, counts)
            for fn in consumers:
                fn(chunk)
        n = self.n_file_rows
        kept = tally.kept
        for j, spec in enumerate(self._specs):
            if tally.ok[j] < self.min_fraction * n:
                _fraction_fail(self.label, spec.name, tally.descs[j], int(tally.ok[j]), n,
                               tally.reasons_of(j), self.min_fraction)
        if kept < self.min_rows:
            _fail(f"{self.label}: only {kept} usable galaxies (of {n} rows; {n - kept} have no measured "
                  f"band); need at least {self.min_rows}")
        self.report = self._report_lines(tally) + self._report_notes(tally)
        self.n_usable = kept
        return self.report

    def _report_lines(self, tally: _Tally) -> tuple[str, ...]:
        """One summary line per band, from the counts of a whole pass."""
        n = self.n_file_rows
        lines = []
        for j, spec in enumerate(self._specs):
            nm = ", ".join(f"{r} ×{c}" for r, c in tally.reasons_of(j).items()) or "none"
            lines.append(f"{spec.name}: {n} rows, {_pct(int(tally.ok[j]), n)} measured, "
                         f"{_pct(int(tally.snr5[j]), n)} detected (S/N≥5), from {tally.descs[j]}; "
                         f"no measurement: {nm} (streamed in {self.n_chunks} chunks)")
        return tuple(lines)

    def _report_notes(self, tally: _Tally) -> tuple[str, ...]:
        """The notes of the report: column notes, z_spec, dropped rows."""
        n, kept = self.n_file_rows, tally.kept
        extra = list(dict.fromkeys(self._notes + tally.notes))
        if self._z_ref is not None:
            zn = f"z_spec from column {self._z_ref}"
            if tally.z_missing:
                zn += f"; {tally.z_missing} rows without a value (NaN/inf/sentinel)"
            extra.append(zn)
        elif self._z_note:
            extra.append(self._z_note)
        if kept < n:
            extra.append(f"{n - kept} of {n} rows dropped: no measured band")
        return tuple(extra)

    def close(self) -> None:
        self._src.close()


def open_catalog_stream(path, *, bands: str | Sequence[str] | None = None,
                        columns: str | Path | Mapping[str, Any] | None = None,
                        flux_unit: str | None = None, extinction: Mapping[str, Any] | None = None,
                        min_rows: int = 100, min_fraction: float = MIN_MEASURED_FRACTION,
                        chunk_rows: int = STREAM_CHUNK_ROWS) -> CatalogStream:
    """Open a Parquet catalog for streaming (same options and checks as :func:`read_catalog`).

    Only the schema and the row-group metadata are read here; the rows are read chunk by chunk by
    :meth:`CatalogStream.read_chunk` / :meth:`CatalogStream.scan`.
    """
    cmap: dict[str, Any] = {}
    maplabel = ""
    if columns is not None:
        cmap, maplabel = load_column_map(columns)
    p = _check_path(path)
    label = str(path)
    fmt = detect_format(p, None, label)
    if fmt != "parquet":
        _fail(f"{label}: only Parquet catalogs can be streamed (this one is {format_title(fmt)}); "
              f"convert it to Parquet or read it whole")
    if p.stat().st_size == 0:
        _fail(f"cannot read {label} as Parquet: the file is empty")
    src = _open_source(p, label, fmt, None)
    try:
        cols = _resolve_columns(src, label, cmap, maplabel, bands)
        if src.nrows == 0:
            _fail(f"{label}: only 0 usable galaxies (the file has no rows); need at least {min_rows}")
        _apply_extinction(src, cols.specs, extinction)
    except BaseException:
        src.close()
        raise
    return CatalogStream(src, cols, path=str(path), flux_unit=flux_unit, min_rows=min_rows,
                         min_fraction=min_fraction, chunk_rows=chunk_rows)


def parquet_num_rows(path) -> int | None:
    """Rows of a Parquet file from its footer (None when ``path`` is not a readable Parquet file)."""
    p = Path(path)
    if not p.is_file() or p.suffix.lower() not in (".parquet", ".pq"):
        return None
    try:
        import pyarrow.parquet as pq

        return int(pq.ParquetFile(str(p)).metadata.num_rows)
    except Exception:
        return None
