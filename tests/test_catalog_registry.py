"""The catalog reader registry (engine.catalog.formats): look-up by name, alias and suffix; new formats."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from astropy.table import Table

from engine.catalog import detect_format, get_reader, read_catalog, register_reader
from engine.catalog import formats as formats_mod
from engine.catalog.sources import _TableSource
from engine.errors import CatalogError


def test_builtin_readers_by_name_alias_and_suffix():
    assert [get_reader(f).title for f in ("fits", "FIT", ".ecsv", "csv", "h5", "parq")] == [
        "FITS", "FITS", "ECSV", "CSV", "HDF5", "Parquet"]
    assert detect_format(Path("x.fits.gz"), None, "x") == "fits"
    assert detect_format(Path("x.PQ"), None, "x") == "parquet"
    assert detect_format(Path("x.txt"), "ascii.basic", "x") == "ascii.basic"
    with pytest.raises(CatalogError, match=r"compressed Parquet is not supported"):
        detect_format(Path("x.parquet.gz"), None, "x")
    with pytest.raises(CatalogError, match=r"use one of fits, ecsv, csv, hdf5, parquet$"):
        detect_format(Path("x.fits"), "votable", "x")
    with pytest.raises(KeyError):
        get_reader("votable")


def test_register_a_new_format_and_refuse_a_taken_name(tmp_path, monkeypatch):
    monkeypatch.setattr(formats_mod, "_READERS", dict(formats_mod._READERS))
    monkeypatch.setattr(formats_mod, "_ALIASES", dict(formats_mod._ALIASES))
    monkeypatch.setattr(formats_mod, "_SUFFIXES", dict(formats_mod._SUFFIXES))
    rng = np.random.default_rng(0)

    def open_npz(path, label, table):
        with np.load(path) as d:
            return _TableSource(Table({k: d[k] for k in d.files}), label)

    register_reader("npz", "NumPy npz", (".npz",), open_npz)
    p = tmp_path / "cat.npz"
    m = rng.uniform(17, 21, 150)
    np.savez(p, **{"mag_sdss2010-r": m, "mag_err_sdss2010-r": np.full(150, 0.05)})
    cat = read_catalog(p)
    assert cat.bands == ("sdss2010-r",) and len(cat) == 150
    np.testing.assert_allclose(cat.magnitudes()[:, 0], m, rtol=1e-12)
    with pytest.raises(ValueError, match="already registered: fits"):
        register_reader("fits", "FITS again", (".fits2",), open_npz)
    with pytest.raises(ValueError, match=r"already registered: \.csv"):
        register_reader("csv2", "CSV again", (".csv",), open_npz)
