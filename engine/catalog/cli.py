"""``popsed catalog FILE``: validate a catalog and print its summary; the catalog options shared by
commands that read a catalog (:func:`add_catalog_arguments`, :func:`catalog_from_args`)."""
from __future__ import annotations

import argparse
import json
from typing import Any

from engine.catalog.messages import _fail
from engine.catalog.model import Catalog
from engine.catalog.read import read_catalog


def add_catalog_arguments(parser: argparse.ArgumentParser, bands: bool = True, min_rows: bool = True) -> None:
    """The catalog options shared by commands that read a catalog (``bands`` / ``min_rows``: whether to add
    ``--bands`` and ``--min-rows`` too)."""
    if bands:
        parser.add_argument("--bands", default="auto",
                            help="comma-separated speclite band names or ECSV filter files (default: all "
                                 "found)")
    parser.add_argument("--columns", metavar="MAP", default=None,
                        help="YAML/JSON column map (bands → columns, z_spec, flux_unit, table)")
    parser.add_argument("--flux-unit", default=None,
                        help="unit of flux columns without one (required for them): nanomaggy, maggy, uJy, "
                             "Jy …")
    parser.add_argument("--extinction", action="append", default=[], metavar="BAND=A",
                        help="Galactic extinction of a band in mag, or BAND=COLUMN; repeatable")
    parser.add_argument("--format", default=None, help="fits, ecsv, csv, hdf5 or parquet (default: suffix)")
    if min_rows:
        parser.add_argument("--min-rows", type=int, default=100, help="minimum number of usable galaxies")


def parse_extinction(items) -> dict[str, Any] | None:
    """``--extinction BAND=A`` / ``BAND=COLUMN`` options as the ``extinction`` mapping of
    :func:`~engine.catalog.read_catalog` (None when none is given)."""
    ext: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            _fail(f"--extinction expects BAND=A or BAND=COLUMN, got '{item}'")
        b, v = item.split("=", 1)
        try:
            ext[b.strip()] = float(v)
        except ValueError:
            ext[b.strip()] = v.strip()
    return ext or None


def catalog_from_args(args: argparse.Namespace, path=None) -> Catalog:
    """Read the catalog named by parsed :func:`add_catalog_arguments` options."""
    return read_catalog(path if path is not None else args.catalog, bands=args.bands, columns=args.columns,
                        flux_unit=args.flux_unit, extinction=parse_extinction(args.extinction),
                        min_rows=args.min_rows, format=args.format)


def add_subparser(subparsers) -> None:
    """``popsed catalog FILE``: validate a catalog and print the per-band summary."""
    p = subparsers.add_parser("catalog", help="check a photometric catalog and summarise its bands",
                              description="Read and validate a catalog; print one line per band.")
    p.add_argument("catalog", help="catalog file (FITS, ECSV, CSV, HDF5, Parquet)")
    add_catalog_arguments(p)
    p.add_argument("--json", action="store_true", help="print a JSON summary instead")
    p.set_defaults(func=_cmd_catalog)


def _cmd_catalog(args) -> int:
    cat = catalog_from_args(args)
    if args.json:
        print(json.dumps({"path": cat.path, "rows": len(cat), "bands": list(cat.bands),
                          "filters": list(cat.filters), "sha256": cat.sha256,
                          "z_spec": cat.z_spec is not None, "report": list(cat.report)}))
    else:
        print(f"{cat.path}: {len(cat)} galaxies, {len(cat.bands)} bands, sha256 {cat.sha256[:12]}")
        for line in cat.report:
            print("  " + line)
    return 0
