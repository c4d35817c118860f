"""Photometric catalogs: read, validate and convert to a common flux space (nanomaggies).

The user documentation (formats, column conventions, column maps, units, sentinels, refusals,
streaming, the ``popsed catalog`` command) is docs/catalogs.md.  Modules, each importing only the
ones above it:

- :mod:`~engine.catalog.messages` -- one-line :class:`~engine.errors.CatalogError` messages;
- :mod:`~engine.catalog.units` -- nanomaggies, maggies, :func:`flux_unit_factor`;
- :mod:`~engine.catalog.model` -- the :class:`Catalog` and its hashes;
- :mod:`~engine.catalog.bands` -- band names (speclite or ECSV filter files), per-band column specs;
- :mod:`~engine.catalog.sources` -- uniform column access over tables, HDF5 groups, Parquet;
- :mod:`~engine.catalog.colmap` -- column maps (:func:`load_column_map`);
- :mod:`~engine.catalog.conventions` -- survey names: SDSS CAS, filter letters, vector columns;
- :mod:`~engine.catalog.columns` -- column conventions (finding band and z_spec columns);
- :mod:`~engine.catalog.validate` -- sentinels, refusals, per-band conversion, model checks;
- :mod:`~engine.catalog.assemble` -- bands into (N, B) arrays, whole-catalog refusals;
- :mod:`~engine.catalog.formats` -- the reader registry (FITS, ECSV, CSV, HDF5, Parquet);
- :mod:`~engine.catalog.read` -- :func:`read_catalog`, :func:`catalog_from_arrays`;
- :mod:`~engine.catalog.stream` -- Parquet batches, samples and :class:`CatalogStream`;
- :mod:`~engine.catalog.cli` -- ``popsed catalog`` and the shared catalog options.

Every problem a user can cause raises :class:`engine.errors.CatalogError` with a one-line message;
the reader never writes anything.
"""
from __future__ import annotations

from engine.catalog.bands import known_band_names
from engine.catalog.cli import add_catalog_arguments, add_subparser, catalog_from_args
from engine.catalog.colmap import load_column_map
from engine.catalog.columns import Z_SPEC_NAMES
from engine.catalog.formats import detect_format, get_reader, register_reader
from engine.catalog.model import Catalog
from engine.catalog.read import catalog_from_arrays, read_catalog
from engine.catalog.stream import (
    STREAM_CHUNK_ROWS,
    STREAM_MIN_ROWS,
    CatalogChunk,
    CatalogStream,
    iter_parquet_batches,
    open_catalog_stream,
    parquet_num_rows,
    read_parquet_sample,
)
from engine.catalog.units import MAG_ZP, flux_unit_factor, maggy, nanomaggy
from engine.catalog.validate import (
    AGREE_MAX_FRACTION,
    AGREE_MEDIAN_MAG,
    AGREE_TOL_MAG,
    ERR_SENTINELS,
    FLUX_ABSURD,
    FLUX_SENTINELS,
    MAG_MAX,
    MAG_MIN,
    MAX_MAG_ERR,
    MIN_MEASURED_FRACTION,
    Z_SENTINELS,
    check_bands,
    check_redshift,
)

__all__ = [
    "Catalog",
    "read_catalog",
    "catalog_from_arrays",
    "check_bands",
    "check_redshift",
    "iter_parquet_batches",
    "read_parquet_sample",
    "CatalogStream",
    "CatalogChunk",
    "open_catalog_stream",
    "parquet_num_rows",
    "flux_unit_factor",
    "load_column_map",
    "known_band_names",
    "nanomaggy",
    "maggy",
    "MAG_ZP",
    "MAX_MAG_ERR",
    "add_catalog_arguments",
    "catalog_from_args",
    "add_subparser",
    "register_reader",
    "get_reader",
    "detect_format",
    "STREAM_MIN_ROWS",
    "STREAM_CHUNK_ROWS",
    "MIN_MEASURED_FRACTION",
    "MAG_MIN",
    "MAG_MAX",
    "FLUX_SENTINELS",
    "FLUX_ABSURD",
    "ERR_SENTINELS",
    "Z_SENTINELS",
    "Z_SPEC_NAMES",
    "AGREE_TOL_MAG",
    "AGREE_MAX_FRACTION",
    "AGREE_MEDIAN_MAG",
]
