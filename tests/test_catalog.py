"""Tests of engine.catalog: formats, units, column maps, sentinels, every refusal, properties, scale."""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from astropy.table import Table

from engine.catalog import (
    MAX_MAG_ERR,
    Catalog,
    add_subparser,
    catalog_from_arrays,
    check_bands,
    check_redshift,
    flux_unit_factor,
    iter_parquet_batches,
    nanomaggy,
    read_catalog,
    read_parquet_sample,
)
from engine.errors import CatalogError, PopsedError

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
BANDS = ("sdss2010-u", "sdss2010-g", "sdss2010-r")
LN10 = math.log(10.0)


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------


def mags_table(n: int = 200, seed: int = 0, bands=BANDS, z: bool = True, flux: bool = False,
               mag: bool = True) -> Table:
    """A clean catalog table by convention: mag_<b>/mag_err_<b> and/or flux_<b>/flux_err_<b>."""
    rng = np.random.default_rng(seed)
    t = Table()
    for j, b in enumerate(bands):
        m = rng.uniform(17.0, 21.0, n) + 0.3 * j
        e = rng.uniform(0.01, 0.2, n)
        if flux:
            f = 10 ** (-0.4 * (m - 22.5))
            t[f"flux_{b}"] = f
            t[f"flux_{b}"].unit = "nanomaggy"
            t[f"flux_err_{b}"] = 0.4 * LN10 * f * e
            t[f"flux_err_{b}"].unit = "nanomaggy"
        if mag:
            t[f"mag_{b}"] = m
            t[f"mag_err_{b}"] = e
    if z:
        t["z_spec"] = rng.uniform(0.01, 0.3, n)
    return t


def expected_flux(t: Table, b: str) -> tuple[np.ndarray, np.ndarray]:
    m = np.asarray(t[f"mag_{b}"], dtype=float)
    e = np.asarray(t[f"mag_err_{b}"], dtype=float)
    f = 10 ** (-0.4 * (m - 22.5))
    return f, 0.4 * LN10 * f * e


def write(t: Table, path: Path, **kw) -> Path:
    fmt = {".csv": "ascii.csv", ".ecsv": "ascii.ecsv", ".fits": "fits", ".parquet": "parquet",
           ".hdf5": "hdf5"}[path.suffix]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if fmt == "hdf5":
            t.write(path, format=fmt, path=kw.pop("path", "photometry"), serialize_meta=True, overwrite=True)
        else:
            t.write(path, format=fmt, overwrite=True, **kw)
    return path


def assert_consistent(cat: Catalog, min_rows: int = 0) -> None:
    """Invariants every Catalog satisfies."""
    n, b = cat.flux.shape
    assert cat.flux_err.shape == (n, b)
    assert b == len(cat.bands) == len(set(cat.bands)) >= 1
    assert len(cat) == n >= max(min_rows, 1)
    assert cat.flux.dtype == np.float64 and cat.flux_err.dtype == np.float64
    meas = np.isfinite(cat.flux)
    assert np.array_equal(meas, np.isfinite(cat.flux_err))  # NaN together
    assert not np.isinf(cat.flux).any() and not np.isinf(cat.flux_err).any()
    assert np.all(cat.flux_err[meas] > 0)
    assert meas.any(axis=1).all()  # every row has a measured band
    if cat.z_spec is not None:
        assert cat.z_spec.shape == (n,) and not np.isinf(cat.z_spec).any()
    assert len(cat.report) >= b
    assert all("\n" not in line for line in cat.report)
    assert len(cat.filters) == b
    assert re.fullmatch(r"[0-9a-f]{64}", cat.sha256)


def raises_one_line(match: str, fn, *args, **kw) -> str:
    """Call fn, expect a CatalogError whose one-line message matches ``match``."""
    with pytest.raises(CatalogError, match=match) as ei:
        fn(*args, **kw)
    msg = str(ei.value)
    assert "\n" not in msg and msg.strip() == msg and len(msg) < 600, msg
    assert isinstance(ei.value, PopsedError) and isinstance(ei.value, ValueError)
    return msg


# ------------------------------------------------------------------------------------------------
# formats and conversions
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".fits", ".ecsv", ".csv", ".hdf5", ".parquet"])
def test_round_trip_each_format(tmp_path, suffix):
    t = mags_table(150, seed=1)
    p = write(t, tmp_path / f"cat{suffix}")
    before = sorted(os.listdir(tmp_path))
    cat = read_catalog(p)
    assert sorted(os.listdir(tmp_path)) == before  # nothing written
    assert_consistent(cat, 100)
    assert cat.bands == BANDS and cat.filters == BANDS and cat.path == str(p)
    for j, b in enumerate(BANDS):
        f, s = expected_flux(t, b)
        np.testing.assert_allclose(cat.flux[:, j], f, rtol=1e-9)
        np.testing.assert_allclose(cat.flux_err[:, j], s, rtol=1e-9)
    np.testing.assert_allclose(cat.z_spec, np.asarray(t["z_spec"]), rtol=1e-12)
    import hashlib

    assert cat.sha256 == hashlib.sha256(p.read_bytes()).hexdigest()
    assert len(cat.report) >= 3 and cat.report[0].startswith("sdss2010-u: 150 rows, 100.0 % measured")


def test_magnitude_to_flux_numbers():
    t = Table({"mag_sdss2010-r": [22.5, 20.0, 0.0] * 40, "mag_err_sdss2010-r": [0.1, 0.1, 0.01] * 40})
    cat = read_catalog(t, min_rows=100)
    np.testing.assert_allclose(cat.flux[:3, 0], [1.0, 10.0, 1e9], rtol=1e-12)
    np.testing.assert_allclose(
        cat.flux_err[:3, 0], [0.4 * LN10 * 0.1, 0.4 * LN10, 0.4 * LN10 * 1e7], rtol=1e-12
    )
    np.testing.assert_allclose(cat.magnitudes()[:3, 0], [22.5, 20.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(cat.magnitude_errors()[:3, 0], [0.1, 0.1, 0.01], rtol=1e-12)
    assert cat.path is None and len(cat) == 120


@pytest.mark.parametrize("unit,factor", [
    ("nanomaggy", 1.0), ("nmgy", 1.0), ("maggy", 1e9), ("maggies", 1e9), ("uJy", 1 / 3.631),
    ("Jy", 1e6 / 3.631), ("mJy", 1e3 / 3.631), ("nJy", 1e-3 / 3.631),
    ("erg / (s cm2 Hz)", 1 / 3.631e-29),
])
def test_flux_unit_factors(unit, factor):
    assert flux_unit_factor(unit) == pytest.approx(factor, rel=1e-9)


def test_astropy_units_defined():
    import astropy.units as u

    assert (1 * nanomaggy).to(u.Jy).value == pytest.approx(3.631e-6)
    from engine.catalog import maggy

    assert (1 * maggy).to(u.Jy).value == pytest.approx(3631.0)
    assert flux_unit_factor(u.uJy) == pytest.approx(1 / 3.631)
    with pytest.raises(ValueError):
        flux_unit_factor("erg / (s cm2 Angstrom)")
    with pytest.raises(ValueError):
        flux_unit_factor("bogus_unit")


def _flux_table(n=120, unit=None, values=(3.631, 36.31)):
    t = Table()
    f = np.resize(np.array(values, dtype=float), n)
    t["flux_sdss2010-r"] = f
    t["flux_err_sdss2010-r"] = 0.1 * f
    if unit:
        t["flux_sdss2010-r"].unit = unit
        t["flux_err_sdss2010-r"].unit = unit
    return t


def test_flux_units_from_column_and_argument(tmp_path):
    # column unit uJy (through an ECSV file): 3.631 uJy = 1 nmgy
    p = write(_flux_table(unit="uJy"), tmp_path / "ujy.ecsv")
    cat = read_catalog(p)
    np.testing.assert_allclose(cat.flux[:2, 0], [1.0, 10.0], rtol=1e-12)
    np.testing.assert_allclose(cat.flux_err[:2, 0], [0.1, 1.0], rtol=1e-12)
    assert "uJy" in cat.report[0]
    # no unit + flux_unit argument (Jy)
    cat = read_catalog(_flux_table(values=(3.631e-6, 3631.0)), flux_unit="Jy")
    np.testing.assert_allclose(cat.flux[:2, 0], [1.0, 1e9], rtol=1e-12)
    # maggies through the column map's flux_unit
    cat = read_catalog(_flux_table(values=(1e-9, 1e-8)), columns={"flux_unit": "maggy"})
    np.testing.assert_allclose(cat.flux[:2, 0], [1.0, 10.0], rtol=1e-12)
    # no unit at all: refused (no unit is assumed); an explicit nanomaggy reads the values as they are
    raises_one_line(r"flux column flux_sdss2010-r \(band sdss2010-r\) has no unit; give it with --flux-unit",
                    read_catalog, _flux_table(values=(1.0, 2.0)))
    cat = read_catalog(_flux_table(values=(1.0, 2.0)), flux_unit="nanomaggy")
    np.testing.assert_allclose(cat.flux[:2, 0], [1.0, 2.0])
    # astropy's own (dimensionless) nanomaggy in a column
    cat = read_catalog(_flux_table(unit="nanomaggy", values=(5.0, 6.0)))
    np.testing.assert_allclose(cat.flux[:2, 0], [5.0, 6.0])


def test_flux_unit_conflict_and_bad_unit(tmp_path):
    raises_one_line(r"column flux_sdss2010-r has unit 'uJy' but the flux unit given is 'Jy'",
                    read_catalog, _flux_table(unit="uJy"), flux_unit="Jy")
    raises_one_line(r"column flux_sdss2010-r \(band sdss2010-r\) has unit 'm': .*not a spectral flux density",
                    read_catalog, _flux_table(unit="m"))
    raises_one_line(r"flux unit for band sdss2010-r: 'furlong' is not a unit",
                    read_catalog, _flux_table(), flux_unit="furlong")


def test_flux_unit_map_versus_argument():
    t = _flux_table()
    raises_one_line(
        r"column map: flux_unit 'maggy' contradicts the flux unit given \('uJy'\)",
        read_catalog,
        t,
        columns={"flux_unit": "maggy"},
        flux_unit="uJy",
    )
    assert read_catalog(t, columns={"flux_unit": "nmgy"}, flux_unit="nanomaggy").bands == ("sdss2010-r",)


def test_fits_with_several_tables(tmp_path):
    from astropy.io import fits

    p = tmp_path / "multi.fits"
    a = fits.table_to_hdu(mags_table(120, seed=1))
    a.name = "PHOT"
    b = fits.table_to_hdu(Table({"x": [1, 2]}))
    b.name = "OTHER"
    fits.HDUList([fits.PrimaryHDU(), a, b]).writeto(p)
    raises_one_line(r"multi\.fits: the FITS file holds 2 tables \(PHOT, OTHER\); choose one with 'table:'",
                    read_catalog, p)
    assert len(read_catalog(p, columns={"table": "PHOT"})) == 120
    assert len(read_catalog(p, columns={"table": 1})) == 120


def test_negative_fluxes_are_kept():
    t = _flux_table(values=(-0.5, 0.0, 2.0, -3.0), unit="nanomaggy")
    t["flux_err_sdss2010-r"] = 1.0
    cat = read_catalog(t)
    assert np.all(np.isfinite(cat.flux)) and (cat.flux < 0).sum() == 60
    m = cat.magnitudes()
    assert np.isnan(m[cat.flux[:, 0] <= 0]).all() and np.isfinite(m[cat.flux[:, 0] > 0]).all()


def test_flux_and_mag_both_present_agree_and_fill(tmp_path):
    t = mags_table(200, seed=2, flux=True, mag=True)
    t["flux_sdss2010-g"][:5] = np.nan  # filled from magnitudes
    cat = read_catalog(write(t, tmp_path / "both.ecsv"))
    f, s = expected_flux(t, "sdss2010-g")
    np.testing.assert_allclose(cat.flux[:, 1], f, rtol=1e-9)
    assert any("5 rows without a flux taken from the magnitudes" in r for r in cat.report)


def test_hdf5_group_of_datasets_dc2_style(tmp_path):
    import h5py

    rng = np.random.default_rng(3)
    n = 300
    p = tmp_path / "dc2like.hdf5"
    with h5py.File(p, "w") as f:
        g = f.create_group("photometry")
        g["id"] = np.arange(n)
        g["redshift"] = rng.uniform(0, 3, n)
        for b in "ugr":
            m = rng.uniform(22, 26, n).astype(np.float32)
            e = rng.uniform(0.02, 0.5, n).astype(np.float32)
            if b == "u":
                m[:30] = 99.0
                e[30:40] = 60.0
            g[f"mag_{b}_lsst"] = m
            g[f"mag_err_{b}_lsst"] = e
    cmap = {
        "bands": {f"lsst2023-{b}": {"mag": f"mag_{b}_lsst", "mag_err": f"mag_err_{b}_lsst"} for b in "ugr"},
        "z_spec": "redshift",
    }
    cat = read_catalog(p, columns=cmap)
    assert_consistent(cat, 100)
    assert cat.bands == ("lsst2023-u", "lsst2023-g", "lsst2023-r")
    assert np.isnan(cat.flux[:40, 0]).all() and np.isfinite(cat.flux[40:, 0]).all()
    assert "mag=99 ×30" in cat.report[0] and f"mag err>{MAX_MAG_ERR:g} ×10" in cat.report[0]
    # two groups → must choose
    with h5py.File(p, "a") as f:
        f.create_group("other")["x"] = np.arange(5.0)
    raises_one_line(
        r"dc2like.hdf5: the HDF5 file holds 2 tables \(other, photometry\); choose one with 'table:'",
        read_catalog,
        p,
        columns=cmap,
    )
    cat2 = read_catalog(p, columns={**cmap, "table": "photometry"})
    np.testing.assert_array_equal(cat2.flux, cat.flux)


def test_column_map_yaml_and_json(tmp_path):
    t = Table()
    rng = np.random.default_rng(4)
    n = 150
    for b in "ugr":
        t[b] = rng.uniform(16, 20, n)
        t[f"{b}_err"] = np.full(n, 0.05)
    t["zspec"] = rng.uniform(0, 0.3, n)
    t["A_r"] = np.full(n, 0.2)
    p = write(t, tmp_path / "short.csv")
    yml = tmp_path / "map.yml"
    yml.write_text(
        "bands:\n"
        "  sdss2010-u: {mag: u, mag_err: u_err, ab_offset: -0.04}\n"
        "  sdss2010-g: {mag: g, mag_err: g_err, extinction: 0.1}\n"
        "  SDSS2010-R: {mag: R, mag_err: r_err, extinction: A_r}   # case-insensitive\n"
        "z_spec: zspec\n")
    cat = read_catalog(p, columns=yml)
    assert cat.bands == BANDS
    np.testing.assert_allclose(cat.flux[:, 0], 10 ** (-0.4 * (np.asarray(t["u"]) - 0.04 - 22.5)), rtol=1e-9)
    np.testing.assert_allclose(cat.flux[:, 1], 10 ** (-0.4 * (np.asarray(t["g"]) - 0.1 - 22.5)), rtol=1e-9)
    np.testing.assert_allclose(cat.flux[:, 2], 10 ** (-0.4 * (np.asarray(t["r"]) - 0.2 - 22.5)), rtol=1e-9)
    np.testing.assert_allclose(cat.z_spec, np.asarray(t["zspec"]))
    assert any("extinction corrected (column A_r)" in r for r in cat.report)
    js = tmp_path / "map.json"
    js.write_text(json.dumps({"bands": {"sdss2010-g": {"mag": "g", "mag_err": "g_err"}}, "z_spec": None}))
    cat = read_catalog(p, columns=js)
    assert cat.bands == ("sdss2010-g",) and cat.z_spec is None
    # bands= selects a subset of the map, in the order asked for
    cat = read_catalog(p, columns=yml, bands=["sdss2010-r", "sdss2010-u"])
    assert cat.bands == ("sdss2010-r", "sdss2010-u")


def test_extinction_argument_scales_fluxes():
    t = mags_table(120, seed=5, z=False)
    plain = read_catalog(t)
    ext = read_catalog(t, extinction={"sdss2010-r": 0.5})
    np.testing.assert_allclose(ext.flux[:, 2], plain.flux[:, 2] * 10 ** 0.2, rtol=1e-12)
    np.testing.assert_allclose(ext.flux_err[:, 2], plain.flux_err[:, 2] * 10 ** 0.2, rtol=1e-12)
    np.testing.assert_array_equal(ext.flux[:, :2], plain.flux[:, :2])
    t["ebv_r"] = np.linspace(0, 1, 120)
    ext2 = read_catalog(t, extinction={"sdss2010-r": "ebv_r"})
    np.testing.assert_allclose(ext2.flux[:, 2], plain.flux[:, 2] * 10 ** (0.4 * np.linspace(0, 1, 120)))
    raises_one_line(r"extinction given for band sdss2010-z, which is not among the bands read",
                    read_catalog, t, extinction={"sdss2010-z": 0.1})
    raises_one_line(
        r"extinction for band sdss2010-r is -1 mag", read_catalog, t, extinction={"sdss2010-r": -1}
    )


def test_fits_vector_columns_through_map(tmp_path):
    n = 130
    rng = np.random.default_rng(6)
    f = rng.uniform(10, 100, (n, 3))
    t = Table({"FLUX": f, "FLUX_IVAR": 1 / (0.1 * f) ** 2, "Z": rng.uniform(0, 0.5, n)})
    p = write(t, tmp_path / "vec.fits")
    cmap = {"bands": {b: {"flux": f"FLUX[{i}]", "flux_ivar": f"FLUX_IVAR[{i}]"} for i, b in enumerate(BANDS)},
            "z_spec": "Z", "flux_unit": "nanomaggy"}
    cat = read_catalog(p, columns=cmap)
    np.testing.assert_allclose(cat.flux, f)
    np.testing.assert_allclose(cat.flux_err, 0.1 * f)
    raises_one_line(r"vec.fits: column FLUX\[7\] does not exist", read_catalog, p,
                    columns={"bands": {"sdss2010-r": {"flux": "FLUX[7]", "flux_ivar": "FLUX_IVAR[0]"}}})


def test_user_ecsv_filter_band(tmp_path):
    filt = tmp_path / "nb501.ecsv"
    write(Table({"wavelength": [4900.0, 5000.0, 5100.0], "response": [0.0, 1.0, 0.0]}), filt)
    t = mags_table(120, seed=7, bands=("sdss2010-r",))
    t["mag_nb501"] = t["mag_sdss2010-r"] + 0.1
    t["mag_err_nb501"] = 0.1
    auto = read_catalog(t)
    assert auto.bands == ("sdss2010-r",) and any("mag_nb501" in r for r in auto.report)
    cat = read_catalog(t, bands=["sdss2010-r", str(filt)])
    assert cat.bands == ("sdss2010-r", "nb501") and cat.filters == ("sdss2010-r", str(filt))


def test_sentinel_counts_and_positions():
    n = 200
    t = mags_table(n, seed=8)
    m = t["mag_sdss2010-u"]
    e = t["mag_err_sdss2010-u"]
    m[0:10] = 99.0
    m[10:15] = -99.0
    m[15:17] = -9999.0
    e[20:23] = 0.0
    e[23:25] = -99.0
    e[30:34] = 7.5
    m[40:42] = np.nan
    e[42] = np.inf
    cat = read_catalog(t)
    line = cat.report[0]
    for frag in ("mag=99 ×10", "mag=-99 ×5", "mag=-9999 ×2", "err=0 ×3", "err=-99 ×2",
                 f"mag err>{MAX_MAG_ERR:g} ×4", "NaN/inf ×3"):
        assert frag in line, line
    bad = np.r_[0:17, 20:25, 30:34, 40:43]
    assert np.isnan(cat.flux[bad, 0]).all() and np.isnan(cat.flux_err[bad, 0]).all()
    assert np.isfinite(np.delete(cat.flux[:, 0], bad)).all()
    assert f"{100 * (n - len(bad)) / n:.1f} % measured" in line
    np.testing.assert_array_equal(cat.row_index, np.arange(n))


def test_flux_sentinels_and_ivar():
    n = 120
    f = np.full(n, 5.0)
    iv = np.full(n, 4.0)
    f[:7] = -99.0
    iv[7:9] = 0.0
    t = Table({"flux_galex-nuv": f, "flux_ivar_galex-nuv": iv})
    cat = read_catalog(t, flux_unit="nanomaggy", min_rows=100)
    assert cat.bands == ("galex-nuv",) and len(cat) == 111  # rows without any band dropped
    np.testing.assert_array_equal(cat.row_index, np.arange(9, n))
    np.testing.assert_allclose(cat.flux_err[:, 0], 0.5)
    assert "flux=-99 ×7" in cat.report[0] and "ivar=0/inf ×2" in cat.report[0]


def test_rows_without_any_measurement_are_dropped():
    t = mags_table(130, seed=9, bands=BANDS[:2])
    for b in BANDS[:2]:
        t[f"mag_{b}"][:10] = 99.0
    t["mag_sdss2010-u"][10:20] = 99.0
    cat = read_catalog(t)
    assert len(cat) == 120
    np.testing.assert_array_equal(cat.row_index, np.arange(10, 130))
    assert np.isnan(cat.flux[:10, 0]).all() and np.isfinite(cat.flux[:10, 1]).all()
    assert any("10 of 130 rows dropped: no measured band" in r for r in cat.report)


def test_to_table_round_trip_and_subset(tmp_path):
    cat = read_catalog(mags_table(150, seed=10))
    p = write(cat.to_table(), tmp_path / "rt.ecsv")
    back = read_catalog(p)
    np.testing.assert_allclose(back.flux, cat.flux, rtol=1e-12)
    np.testing.assert_allclose(back.flux_err, cat.flux_err, rtol=1e-12)
    np.testing.assert_allclose(back.z_spec, cat.z_spec)
    sub = cat.subset(cat.z_spec < 0.1)
    assert len(sub) == int((cat.z_spec < 0.1).sum()) and sub.bands == cat.bands


def test_catalog_from_arrays():
    rng = np.random.default_rng(11)
    f = rng.normal(10, 3, (150, 2))
    s = np.full((150, 2), 0.5)
    f[:5, 0] = np.nan
    s[5:8, 1] = 0.0
    cat = catalog_from_arrays(["sdss2010-g", "sdss2010-r"], f, s, z_spec=rng.uniform(0, 1, 150))
    assert_consistent(cat, 100)
    assert np.isnan(cat.flux[:5, 0]).all() and np.isnan(cat.flux[5:8, 1]).all()
    np.testing.assert_array_equal(cat.flux[8:], f[8:])
    assert cat.sha256 == catalog_from_arrays(["sdss2010-g", "sdss2010-r"], f, s,
                                             z_spec=cat.z_spec).sha256
    raises_one_line(
        r"<arrays>: only 45 usable galaxies \(of 50 rows; 5 have no measured band\)",
        catalog_from_arrays,
        ["sdss2010-g"],
        f[:50, :1],
        s[:50, :1],
    )
    raises_one_line(r"must both be \(N, 2\)", catalog_from_arrays, ["sdss2010-g", "sdss2010-r"], f, s[:, :1])
    s2 = s.copy()
    s2[10, 0] = -0.3
    raises_one_line(r"column flux_err_sdss2010-g has 1 negative errors", catalog_from_arrays,
                    ["sdss2010-g", "sdss2010-r"], f, s2)


# ------------------------------------------------------------------------------------------------
# every refusal, with its message
# ------------------------------------------------------------------------------------------------


def test_error_missing_file(tmp_path):
    raises_one_line(r"catalog file not found: .*nope\.fits$", read_catalog, tmp_path / "nope.fits")


def test_error_directory(tmp_path):
    raises_one_line(r"is a directory", read_catalog, tmp_path)


def test_error_unknown_format(tmp_path):
    p = tmp_path / "cat.txt"
    p.write_text("a b\n1 2\n")
    raises_one_line(r"unknown catalog format '\.txt' for .*cat\.txt; use one of \.fits, \.ecsv, \.csv",
                    read_catalog, p)
    raises_one_line(r"unknown catalog format 'xls'", read_catalog, p, format="xls")


@pytest.mark.parametrize("suffix,fmt", [(".fits", "FITS"), (".parquet", "Parquet"), (".hdf5", "HDF5"),
                                         (".ecsv", "ECSV")])
def test_error_corrupt_file(tmp_path, suffix, fmt):
    p = tmp_path / f"bad{suffix}"
    p.write_bytes(b"\x00\x01garbage" * 50)
    raises_one_line(rf"cannot read .*bad\{suffix} as {fmt}: ", read_catalog, p)


def test_error_empty_file(tmp_path):
    p = tmp_path / "empty.csv"
    p.write_text("")
    raises_one_line(r"cannot read .*empty\.csv as CSV: the file is empty", read_catalog, p)


def test_error_no_band_columns(tmp_path):
    p = write(Table({"u": np.ones(120), "u_err": np.ones(120), "ra": np.zeros(120)}), tmp_path / "nob.csv")
    raises_one_line(
        r"no band columns in .*nob\.csv: expected mag_<band>/mag_err_<band> .*columns present: u, u_err, ra",
        read_catalog,
        p,
    )
    t = Table({"mag_u": np.ones(120), "mag_err_u": np.ones(120)})
    raises_one_line(
        r"columns mag_u/mag_err_u look like photometry: map them to speclite bands with a column map "
        r"\(--columns\), e\.g\. bands: \{<band>: \{mag: mag_u, mag_err: mag_err_u\}\}",
        read_catalog,
        t,
    )
    t = Table({"mag_u": np.ones(120), "mag_g": np.ones(120)})
    raises_one_line(
        r"columns mag_u, mag_g look like photometry but their band names are not speclite", read_catalog, t
    )


def test_error_band_asked_for_but_absent():
    msg = raises_one_line(
        r"no columns for band\(s\) sdss2010-z .*bands found: sdss2010-u, sdss2010-g, sdss2010-r",
        read_catalog,
        mags_table(),
        bands=["sdss2010-r", "sdss2010-z"],
    )
    assert "did you mean" not in msg
    raises_one_line(
        r"no columns for band\(s\) sdss2010noatm-r .*; did you mean sdss2010noatm-r → sdss2010-r\?$",
        read_catalog,
        mags_table(),
        bands=["sdss2010noatm-r"],
    )


def test_error_unknown_band_name():
    raises_one_line(
        r"unknown band 'sdss-r' \(not a speclite filter name nor an ECSV filter file\); did you mean "
        r"'sdss2010-r'",
        read_catalog,
        mags_table(),
        bands=["sdss-r"],
    )
    raises_one_line(
        r"unknown band 'sdss2010-q'.*did you mean", read_catalog, mags_table(), bands="sdss2010-q"
    )


def test_error_band_without_errors():
    t = mags_table()
    del t["mag_err_sdss2010-g"]
    raises_one_line(
        r"band sdss2010-g has values \(column mag_sdss2010-g\) but no error column", read_catalog, t
    )
    t = _flux_table()
    del t["flux_err_sdss2010-r"]
    raises_one_line(
        r"band sdss2010-r has values \(column flux_sdss2010-r\) but no error column", read_catalog, t
    )
    raises_one_line(r"band sdss2010-u has 'mag_err'/'flux_ivar' but no 'mag' column", read_catalog,
                    mags_table(), columns={"bands": {"sdss2010-u": {"mag_err": "mag_err_sdss2010-u"}}})


def test_error_negative_errors():
    t = mags_table(200)
    t["mag_err_sdss2010-r"][[3, 7, 9]] = -0.2
    msg = raises_one_line(r"column mag_err_sdss2010-r has 3 negative errors \(min -0\.2\) of 200 rows; "
                          r"errors must be > 0", read_catalog, t)
    assert msg.startswith("<in-memory table>:")
    t = _flux_table()
    t["flux_err_sdss2010-r"][0] = -5.0
    raises_one_line(r"column flux_err_sdss2010-r has 1 negative errors \(min -5\)", read_catalog, t)
    t = Table({"flux_sdss2010-r": np.ones(120), "flux_ivar_sdss2010-r": np.r_[-1.0, np.ones(119)]})
    raises_one_line(r"column flux_ivar_sdss2010-r has 1 negative inverse variances", read_catalog, t)


def test_error_zero_errors_leave_too_few(tmp_path):
    t = mags_table(200)
    t["mag_err_sdss2010-g"][:120] = 0.0
    p = write(t, tmp_path / "zeros.csv")
    raises_one_line(
        r"zeros\.csv: band sdss2010-g \(mag_sdss2010-g ± mag_err_sdss2010-g \[AB mag\]\) keeps only "
        r"80 of 200 rows \(40\.0 %\) with a measurement; no measurement: err=0 ×120; need ≥ 50 %",
        read_catalog,
        p,
    )


def test_error_nan_inf_values(tmp_path):
    t = mags_table(200)
    t["mag_sdss2010-u"][:90] = np.nan
    t["mag_sdss2010-u"][90:110] = np.inf
    p = write(t, tmp_path / "nan.ecsv")
    raises_one_line(r"nan\.ecsv: band sdss2010-u .* keeps only 90 of 200 rows \(45\.0 %\) .*NaN/inf ×110",
                    read_catalog, p)
    # a few NaN/inf are "no measurement", counted
    t = mags_table(200)
    t["mag_sdss2010-u"][:3] = np.nan
    t["mag_err_sdss2010-u"][3:5] = np.inf
    assert "NaN/inf ×5" in read_catalog(t).report[0]


def test_error_sentinels_leave_too_few():
    t = mags_table(200)
    t["mag_sdss2010-u"][:70] = 99.0
    t["mag_sdss2010-u"][70:110] = -99.0
    raises_one_line(
        r"band sdss2010-u .* keeps only 90 of 200 rows .*mag=99 ×70, mag=-99 ×40", read_catalog, t
    )


def test_error_band_appears_twice(tmp_path):
    t = mags_table(120)
    t["MAG_SDSS2010-R"] = t["mag_sdss2010-r"]
    raises_one_line(
        r"band sdss2010-r appears twice: columns mag_sdss2010-r and MAG_SDSS2010-R", read_catalog, t
    )
    t = mags_table(120)
    t["sdss2010-r"] = t["mag_sdss2010-r"]  # bare band name = magnitudes too
    raises_one_line(r"band sdss2010-r appears twice: columns mag_sdss2010-r and sdss2010-r", read_catalog, t)
    # duplicated CSV header
    p = tmp_path / "dup.csv"
    lines = ["mag_sdss2010-r,mag_err_sdss2010-r,mag_sdss2010-r"] + ["20.0,0.1,20.1"] * 120
    p.write_text("\n".join(lines) + "\n")
    raises_one_line(
        r"dup\.csv: band sdss2010-r appears twice: column mag_sdss2010-r occurs twice", read_catalog, p
    )
    # bands asked for twice
    raises_one_line(r"band sdss2010-r appears twice in the bands asked for", read_catalog, mags_table(),
                    bands=["sdss2010-r", "SDSS2010-R"])
    # column map with a duplicate key (YAML and JSON)
    y = tmp_path / "dup.yml"
    y.write_text("bands:\n  sdss2010-r: {mag: a, mag_err: b}\n  sdss2010-r: {mag: c, mag_err: d}\n")
    raises_one_line(
        r"column map .*dup\.yml: band 'sdss2010-r' appears twice", read_catalog, mags_table(), columns=y
    )
    j = tmp_path / "dup.json"
    j.write_text('{"bands": {"sdss2010-r": {"mag": "a", "mag_err": "b"}, "sdss2010-r": {"mag": "a"}}}')
    raises_one_line(
        r"column map .*dup\.json: band 'sdss2010-r' appears twice", read_catalog, mags_table(), columns=j
    )
    raises_one_line(
        r"band sdss2010-r appears twice",
        read_catalog,
        mags_table(),
        columns={
            "bands": {
                "sdss2010-r": {"mag": "mag_sdss2010-r", "mag_err": "mag_err_sdss2010-r"},
                "SDSS2010-R": {"mag": "mag_sdss2010-g", "mag_err": "mag_err_sdss2010-g"},
            }
        },
    )
    raises_one_line(
        r"column mag_sdss2010-r is used for two bands \(sdss2010-r and sdss2010-g\)",
        read_catalog,
        mags_table(),
        columns={
            "bands": {
                "sdss2010-r": {"mag": "mag_sdss2010-r", "mag_err": "mag_err_sdss2010-r"},
                "sdss2010-g": {"mag": "mag_sdss2010-r", "mag_err": "mag_err_sdss2010-g"},
            }
        },
    )


def test_error_parquet_duplicate_columns(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    arr = pa.array(np.full(120, 20.0))
    tab = pa.Table.from_arrays([arr, pa.array(np.full(120, 0.1)), arr],
                               names=["mag_sdss2010-r", "mag_err_sdss2010-r", "mag_sdss2010-r"])
    pq.write_table(tab, tmp_path / "dup.parquet")
    raises_one_line(r"dup\.parquet: band sdss2010-r appears twice", read_catalog, tmp_path / "dup.parquet")


def test_error_flux_and_magnitude_disagree(tmp_path):
    t = mags_table(200, flux=True)
    for b in BANDS:
        for c in (f"flux_{b}", f"flux_err_{b}"):
            t[c].unit = None
            t[c] *= 3.631  # really uJy, said to be nanomaggies
    p = write(t, tmp_path / "mix.ecsv")
    raises_one_line(
        r"mix\.ecsv: band sdss2010-u: flux column flux_sdss2010-u and magnitude column mag_sdss2010-u "
        r"disagree: 200 of 200 rows \(S/N≥5\) differ by more than 0\.05 mag \(median m\(flux\) − mag = "
        r"-1\.400\)",
        read_catalog,
        p,
        flux_unit="nanomaggy",
    )
    # the right unit makes them agree
    assert read_catalog(p, flux_unit="uJy").bands == BANDS


def test_error_fewer_than_100_usable(tmp_path):
    p = write(mags_table(99), tmp_path / "small.fits")
    raises_one_line(
        r"small\.fits: only 99 usable galaxies \(of 99 rows; 0 have no measured band\); need at least 100",
        read_catalog,
        p,
    )
    t = mags_table(150, bands=BANDS[:1])
    t["mag_sdss2010-u"][:60] = 99.0
    raises_one_line(r"only 90 usable galaxies \(of 150 rows; 60 have no measured band\)", read_catalog, t)
    assert len(read_catalog(t, min_rows=90)) == 90
    raises_one_line(r"only 0 usable galaxies", read_catalog, mags_table(0))


def test_error_non_numeric_column(tmp_path):
    p = tmp_path / "text.csv"
    rows = ["mag_sdss2010-r,mag_err_sdss2010-r"] + ["20.5,0.1"] * 118 + ["bright,0.1", "20.1,0.1"]
    p.write_text("\n".join(rows) + "\n")
    raises_one_line(
        r"text\.csv: column mag_sdss2010-r is not numeric: 1 of 120 values are not numbers \(e\.g\. "
        r"'bright'\)",
        read_catalog,
        p,
    )


def test_error_bands_not_covered_by_emulator():
    cat = read_catalog(mags_table())
    check_bands(cat, list(BANDS) + ["sdss2010-z"])
    raises_one_line(
        r"catalog band\(s\) sdss2010-u not covered by the emulator \(it has sdss2010-g, sdss2010-r, "
        r"sdss2010noatm-u\).*similar: sdss2010-u → sdss2010noatm-u\?",
        check_bands,
        cat,
        ["sdss2010-g", "sdss2010-r", "sdss2010noatm-u"],
    )
    raises_one_line(
        r"not covered by the forward model", check_bands, cat, ["galex-nuv"], what="forward model"
    )


def test_error_spec_z_outside_range(tmp_path):
    t = mags_table(200)
    t["z_spec"][:7] = 0.9
    t["z_spec"][7] = -0.01
    t["z_spec"][8:10] = -99.0  # sentinel → missing
    p = write(t, tmp_path / "z.csv")
    cat = read_catalog(p)
    assert any("2 rows without a value" in r for r in cat.report)
    check_redshift(cat.subset(np.arange(10, 200)), 0.0, 0.65)
    raises_one_line(r"z\.csv: 8 of 200 galaxies have z_spec outside the model's range \[0, 0\.65\] "
                    r"\(min -0\.01, max 0\.9\); 2 of 200 have no z_spec", check_redshift, cat, 0.0, 0.65)
    nz = read_catalog(mags_table(z=False))
    raises_one_line(r"no z_spec column, but the fit uses observed redshifts", check_redshift, nz, 0.0, 0.65)


def test_error_column_map_problems(tmp_path):
    t = mags_table()
    raises_one_line(r"column map file not found", read_catalog, t, columns=tmp_path / "none.yml")
    raises_one_line(r"column map: unknown key\(s\) band \(allowed: bands, flux_unit, table, z_spec\)",
                    read_catalog, t, columns={"band": {}})
    raises_one_line(r"unknown key\(s\) mag_error for band 'sdss2010-r'", read_catalog, t,
                    columns={"bands": {"sdss2010-r": {"mag": "mag_sdss2010-r", "mag_error": "x"}}})
    raises_one_line(
        r"column 'mag_r' \(sdss2010-r mag value, from column map\) not found; columns present: "
         "mag_sdss2010-u",
        read_catalog,
        t,
        columns={"bands": {"sdss2010-r": {"mag": "mag_r", "mag_err": "mag_err_sdss2010-r"}}},
    )
    raises_one_line(r"z_spec column 'redshift' \(from column map\) not found", read_catalog, t,
                    columns={"z_spec": "redshift"})
    bad = tmp_path / "bad.yml"
    bad.write_text("bands: [unclosed\n")
    raises_one_line(r"column map .*bad\.yml is not valid YAML", read_catalog, t, columns=bad)
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    raises_one_line(r"column map .*bad\.json is not valid JSON", read_catalog, t, columns=bad)


def test_cli_exit_code_2_one_line_nothing_written(tmp_path, monkeypatch, capsys):
    import engine.cli as cli

    monkeypatch.setattr(cli, "COMMAND_MODULES", tuple(cli.COMMAND_MODULES) + ("engine.catalog",))
    # avoid importing modules that do not exist yet in this checkout
    monkeypatch.setattr(cli, "COMMAND_MODULES", ("engine.catalog",))
    good = write(mags_table(150), tmp_path / "good.ecsv")
    assert cli.main(["catalog", str(good)]) == 0
    out = capsys.readouterr().out
    assert "150 galaxies, 3 bands" in out and "sdss2010-u: 150 rows" in out
    assert cli.main(["catalog", str(good), "--json", "--bands", "sdss2010-g,sdss2010-r"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["bands"] == ["sdss2010-g", "sdss2010-r"] and info["rows"] == 150
    before = sorted(os.listdir(tmp_path))
    assert cli.main(["catalog", str(tmp_path / "missing.csv")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("popsed catalog: error: catalog file not found:")
    assert cli.main(["catalog", str(good), "--extinction", "sdss2010-r=0.1", "--flux-unit", "uJy"]) == 0
    capsys.readouterr()
    assert sorted(os.listdir(tmp_path)) == before


def test_add_subparser_standalone(tmp_path):
    parser = argparse.ArgumentParser()
    add_subparser(parser.add_subparsers())
    p = write(mags_table(120), tmp_path / "c.parquet")
    args = parser.parse_args(["catalog", str(p), "--min-rows", "10"])
    assert args.func(args) == 0


# ------------------------------------------------------------------------------------------------
# property-based tests: garbage in → consistent catalog or CatalogError, nothing else
# ------------------------------------------------------------------------------------------------

from hypothesis import HealthCheck, assume, event, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402

GARBAGE = [np.nan, np.inf, -np.inf, 99.0, -99.0, 999.0, -999.0, 9999.0, -9999.0, 0.0, -1.0, 1e30, -1e30,
           -0.5, 5e-324, 1e308, -1e308, 50.0, -10.0]
#: examples per property test; raise for a longer hunt, e.g. POPSED_HYPOTHESIS_EXAMPLES=5000
N_EXAMPLES = int(os.environ.get("POPSED_HYPOTHESIS_EXAMPLES", "150"))
PROP = settings(max_examples=N_EXAMPLES, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
BAND_POOL = ["sdss2010-u", "sdss2010-g", "galex-nuv", "lsst2023-i", "twomass-Ks"]


def _column(draw, n, lo, hi):
    """n values in [lo, hi), with a drawn fraction (often 0) replaced by garbage."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = rng.uniform(lo, hi, n)
    p_bad = draw(st.sampled_from([0.0, 0.0, 0.0, 0.02, 0.1, 0.3, 0.6, 1.0]))
    bad = rng.random(n) < p_bad
    if bad.any():
        pool = np.array(GARBAGE + [draw(st.floats(width=64)) for _ in range(3)])
        x[bad] = rng.choice(pool, int(bad.sum()))
    return x


def _rarely(draw) -> bool:
    return draw(st.sampled_from([False] * 9 + [True]))


@st.composite
def garbage_tables(draw):
    n = draw(st.integers(0, 40))
    bands = draw(st.lists(st.sampled_from(BAND_POOL), min_size=1, max_size=3, unique=True))
    t = Table()
    for b in bands:
        kind = draw(st.sampled_from(["mag", "flux", "both", "ivar", "bare", "mag", "flux"]))
        if _rarely(draw):
            kind = "mag_noerr"
        name = b.upper() if draw(st.booleans()) else b
        if kind in ("mag", "both", "mag_noerr"):
            t[f"mag_{name}"] = _column(draw, n, 12, 28)
            if kind != "mag_noerr":
                t[f"mag_err_{name}"] = _column(draw, n, 0.001, 1.0)
        if kind in ("flux", "both"):
            if kind == "both":  # consistent with the magnitudes unless garbage intervenes
                m = np.asarray(t[f"mag_{name}"])
                t[f"flux_{name}"] = 10 ** (-0.4 * (np.clip(m, -300, 300) - 22.5))
                t[f"flux_err_{name}"] = _column(draw, n, 1e-3, 50)
            else:
                t[f"flux_{name}"] = _column(draw, n, -5, 1e4)
                t[f"flux_err_{name}"] = _column(draw, n, 1e-3, 50)
            unit = draw(
                st.sampled_from([None, None, "nanomaggy", "uJy", "Jy", "maggy", "m", "bogus", "erg/s"])
            )
            if unit and kind != "both":
                t[f"flux_{name}"].unit = unit
        if kind == "ivar":
            t[f"flux_{name}"] = _column(draw, n, -5, 1e4)
            t[f"flux_ivar_{name}"] = _column(draw, n, 1e-4, 1e4)
        if kind == "bare":
            t[name] = _column(draw, n, 12, 28)
            t[f"{name}_err"] = _column(draw, n, 0.001, 1.0)
        if _rarely(draw):  # a duplicate in another case
            c = t.colnames[-1]
            t[c.swapcase()] = t[c]
        if _rarely(draw) and n:  # text in a numeric column
            c = t.colnames[-1]
            vals = np.asarray(t[c]).astype(str)
            vals[draw(st.integers(0, n - 1))] = draw(st.sampled_from(["abc", "", "1e5", " 7 ", "--"]))
            del t[c]
            t[c] = vals
    if draw(st.booleans()):
        t["z_spec"] = _column(draw, n, 0, 3)
    if draw(st.booleans()):
        t["junk"] = np.array(["x"] * n)
    return t


def _check_against_input(cat: Catalog, t: Table, n_in: int, min_rows: int) -> None:
    assert_consistent(cat, min_rows)
    assert len(cat) <= n_in
    assert cat.row_index is not None and len(cat.row_index) == len(cat)
    assert np.all(np.diff(cat.row_index) > 0)
    for j in range(len(cat.bands)):  # ≥ 50 % of the input rows measured in every band
        assert np.isfinite(cat.flux[:, j]).sum() >= 0.5 * n_in
    # magnitude-only bands: fluxes follow the AB formula exactly
    for j, b in enumerate(cat.bands):
        cols = {c.lower(): c for c in t.colnames}
        if f"mag_{b.lower()}" in cols and f"flux_{b.lower()}" not in cols and f"mag_err_{b.lower()}" in cols:
            m = np.asarray(t[cols[f"mag_{b.lower()}"]], dtype=float)[cat.row_index]
            ok = np.isfinite(cat.flux[:, j])
            np.testing.assert_allclose(cat.flux[ok, j], 10 ** (-0.4 * (m[ok] - 22.5)), rtol=1e-9)


@PROP
@given(t=garbage_tables(), min_rows=st.integers(1, 10))
def test_property_in_memory_garbage(t, min_rows):
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no silent overflow/invalid warnings either
        try:
            cat = read_catalog(t, min_rows=min_rows)
        except CatalogError as exc:
            msg = str(exc)
            assert msg and "\n" not in msg
            event(f"refused: {re.sub(r'[0-9.]+', 'N', msg.split(': ', 1)[-1])[:60]}")
            return
    event("loaded")
    _check_against_input(cat, t, len(t), min_rows)


@settings(max_examples=max(10, N_EXAMPLES // 4), deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.data_too_large,
                                                                 HealthCheck.function_scoped_fixture])
@given(t=garbage_tables(), suffix=st.sampled_from([".csv", ".ecsv", ".parquet", ".hdf5"]))
def test_property_files_with_garbage(tmp_path, t, suffix):
    p = tmp_path / f"g{suffix}"
    try:
        write(t, p)
    except Exception:
        assume(False)  # astropy cannot write this table (e.g. case-duplicate names in HDF5)
    try:
        cat = read_catalog(p, min_rows=1)
    except CatalogError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    assert_consistent(cat, 1)


@PROP
@given(n=st.integers(1, 40), data=st.data())
def test_property_catalog_from_arrays(n, data):
    f = data.draw(
        hnp.arrays(np.float64, (n, 2), elements=st.one_of(st.floats(-10, 1e3), st.sampled_from(GARBAGE)))
    )
    s = data.draw(
        hnp.arrays(np.float64, (n, 2), elements=st.one_of(st.floats(1e-3, 10), st.sampled_from(GARBAGE)))
    )
    try:
        cat = catalog_from_arrays(["sdss2010-g", "sdss2010-r"], f, s, min_rows=1)
    except CatalogError as exc:
        assert "\n" not in str(exc)
        return
    assert_consistent(cat, 1)
    ok = np.isfinite(cat.flux)
    np.testing.assert_array_equal(cat.flux[ok], f[cat.row_index][ok])


@PROP
@given(m=hnp.arrays(np.float64, st.integers(1, 30), elements=st.floats(-5, 45)),
       e=st.floats(1e-4, 4.9))
def test_property_magnitude_round_trip(m, e):
    t = Table({"mag_sdss2010-r": m, "mag_err_sdss2010-r": np.full(m.size, e)})
    cat = read_catalog(t, min_rows=1)
    np.testing.assert_allclose(cat.magnitudes()[:, 0], m, atol=1e-9)
    np.testing.assert_allclose(cat.magnitude_errors()[:, 0], e, rtol=1e-9)


# ------------------------------------------------------------------------------------------------
# Parquet at scale: 10⁶ rows with bounded memory; streaming and sampling
# ------------------------------------------------------------------------------------------------


def _write_big_parquet(path: Path, n: int, bands=("sdss2010-g", "sdss2010-r", "sdss2010-i"),
                       row_group: int = 100_000, seed: int = 0) -> None:
    """Written in row groups, so building the file is memory-bounded too."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    writer = None
    try:
        for start in range(0, n, row_group):
            k = min(row_group, n - start)
            cols = {}
            for b in bands:
                f = 10 ** (-0.4 * (rng.uniform(17, 23, k) - 22.5))
                cols[f"flux_{b}"] = f + rng.normal(0, 0.3, k)
                cols[f"flux_err_{b}"] = np.full(k, 0.3)
            cols["z_spec"] = rng.uniform(0, 0.6, k)
            cols["row"] = np.arange(start, start + k)
            tab = pa.table(cols)
            if writer is None:
                meta = {b"table_meta_yaml": "\n".join(
                    ["datatype:"] + [f"- {{name: {c}, unit: nanomaggy, datatype: float64}}" for c in cols
                                     if c.startswith("flux")]).encode()}
                tab = tab.replace_schema_metadata(meta)
                writer = pq.ParquetWriter(str(path), tab.schema)
            writer.write_table(tab.replace_schema_metadata(writer.schema.metadata))
    finally:
        if writer is not None:
            writer.close()


@pytest.fixture(scope="module")
def big_parquet(tmp_path_factory):
    p = tmp_path_factory.mktemp("big") / "big.parquet"
    _write_big_parquet(p, 1_000_000)
    return p


_MEASURE = """
import json, sys, time, tracemalloc
import numpy as np, pyarrow as pa
from engine.catalog import read_catalog

def status():
    d = {}
    try:
        for line in open("/proc/self/status"):
            if line.startswith(("VmRSS", "VmHWM")):
                k, v = line.split(":")
                d[k] = int(v.split()[0]) / 1024
    except OSError:
        pass
    return d

path, small = sys.argv[1], sys.argv[2]
read_catalog(small, min_rows=1)          # imports and lazy module state, outside the measurement
try:
    open("/proc/self/clear_refs", "w").write("5")  # reset the peak-RSS mark (Linux)
except OSError:
    pass
rss0 = status()
tracemalloc.start()
t0 = time.perf_counter()
cat = read_catalog(path)
dt = time.perf_counter() - t0
_, peak = tracemalloc.get_traced_memory()
tracemalloc.stop()
rss1 = status()
print(json.dumps(dict(rows=len(cat), bands=len(cat.bands), seconds=dt, numpy_peak_mb=peak / 2**20,
                      out_mb=(cat.flux.nbytes + cat.flux_err.nbytes + cat.z_spec.nbytes) / 2**20,
                      arrow_pool_peak_mb=pa.default_memory_pool().max_memory() / 2**20,
                      rss_before_mb=rss0.get("VmRSS"), rss_peak_mb=rss1.get("VmHWM"),
                      file_mb=__import__("os").path.getsize(path) / 2**20)))
"""


def measure_parquet_read(path: Path, small: Path) -> dict:
    """Time and peak memory of read_catalog(path) in a fresh interpreter."""
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    res = subprocess.run([sys.executable, "-c", _MEASURE, str(path), str(small)], capture_output=True,
                         text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_million_row_parquet_bounded_memory(big_parquet, tmp_path):
    """10⁶ rows × 3 bands: peak memory is the output arrays plus a few single-band columns."""
    small = tmp_path / "small.parquet"
    _write_big_parquet(small, 10)
    info = measure_parquet_read(big_parquet, small)
    over = info["numpy_peak_mb"] - info["out_mb"]
    print(
        f"\n10^6-row Parquet ({info['file_mb']:.0f} MB file): {info['rows']} rows x {info['bands']} bands in "
        f"{info['seconds']:.2f} s ({info['rows'] / info['seconds']:.3g} rows/s); numpy peak "
        f"{info['numpy_peak_mb']:.0f} MB = {info['out_mb']:.0f} MB output + {over:.0f} MB temporaries; "
        f"arrow pool peak {info['arrow_pool_peak_mb']:.0f} MB; RSS {info['rss_before_mb']} -> peak "
        f"{info['rss_peak_mb']} MB"
    )
    assert info["rows"] == 1_000_000 and info["bands"] == 3
    # temporaries: a handful of single-band columns (8 MB each at 10^6 rows), never another (N, B) copy
    assert over < 8 * 8.0, info
    assert info["arrow_pool_peak_mb"] < 64  # one column at a time, not the whole file (~50 MB)
    if info["rss_peak_mb"] is not None:
        assert info["rss_peak_mb"] - info["rss_before_mb"] < info["out_mb"] + 150


def test_iter_parquet_batches_and_sample(big_parquet):
    total = 0
    last = -1
    for batch in iter_parquet_batches(big_parquet, columns=["row", "flux_sdss2010-r"], batch_rows=250_000):
        assert set(batch) == {"row", "flux_sdss2010-r"} and len(batch["row"]) <= 250_000
        assert batch["row"][0] == last + 1
        last = int(batch["row"][-1])
        total += len(batch["row"])
    assert total == 1_000_000
    s, idx = read_parquet_sample(big_parquet, 5000, seed=1, columns=["row", "z_spec"], return_index=True)
    assert len(s["row"]) == 5000 and len(np.unique(s["row"])) == 5000
    np.testing.assert_array_equal(s["row"], idx)
    s2 = read_parquet_sample(big_parquet, 5000, seed=1, columns=["row"])
    np.testing.assert_array_equal(s2["row"], s["row"])  # reproducible
    assert 0.4 < np.mean(s["row"]) / 1e6 < 0.6  # spread over the whole file
    raises_one_line(
        r"column\(s\) nope not in the Parquet file", lambda: next(iter_parquet_batches(big_parquet, ["nope"]))
    )
    raises_one_line(
        r"cannot sample 2000000 rows from 1000000", read_parquet_sample, big_parquet, 2_000_000, seed=0
    )


# ------------------------------------------------------------------------------------------------
# real catalogs (skipped when ../shared/data is absent)
# ------------------------------------------------------------------------------------------------


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} not available")
    return path


def test_real_sdss_mgs_csv_with_column_map(tmp_path):
    p = _need(SHARED_DATA / "real" / "mlz_sdss_mgs" / "sdss_mgs_10k.csv")
    y = tmp_path / "mgs.yml"
    y.write_text("bands:\n" + "".join(f"  sdss2010-{b}: {{mag: {b}, mag_err: {b}_err}}\n" for b in "ugriz")
                 + "z_spec: zspec\n")
    cat = read_catalog(p, columns=y)
    assert_consistent(cat, 100)
    assert len(cat) == 10_000 and cat.bands == tuple(f"sdss2010-{b}" for b in "ugriz")
    assert np.isfinite(cat.flux).all()
    med_r = np.median(cat.magnitudes()[:, 2])
    assert 16.8 < med_r < 17.1  # README: median r 16.92
    check_redshift(cat, 0.0, 0.3)
    raises_one_line(
        r"no band columns in .*sdss_mgs_10k\.csv.*columns present: split, zspec, u, g", read_catalog, p
    )


def test_real_dc2_hdf5_sentinels():
    p = _need(SHARED_DATA / "dc2" / "test_dc2_training_9816.hdf5")
    cmap = {
        "bands": {
            f"lsst2023-{b}": {"mag": f"mag_{b}_lsst", "mag_err": f"mag_err_{b}_lsst"} for b in "ugrizy"
        },
        "z_spec": "redshift",
    }
    cat = read_catalog(p, columns=cmap)
    assert_consistent(cat, 100)
    assert len(cat) == 10_225
    assert "mag=99 ×714" in cat.report[0]  # u-band non-detections
    assert 0.85 < np.isfinite(cat.flux[:, 0]).mean() < 0.95
    assert np.isfinite(cat.flux[:, 2:]).all()
    raises_one_line(r"2\d\d of 10225 galaxies have z_spec outside the model's range \[0, 2\]",
                    check_redshift, cat, 0.0, 2.0)


def test_real_kcorrect_fits_ivar_and_extinction():
    p = _need(SHARED_DATA / "real" / "kcorrect_gst" / "gst_tests_small.fits")
    cmap = {"bands": {f"sdss2010-{b}": {"flux": f"MODELFLUX[{i}]", "flux_ivar": f"MODELFLUX_IVAR[{i}]",
                                        "extinction": f"EXTINCTION[{i}]"} for i, b in enumerate("ugriz")},
            "z_spec": "Z", "flux_unit": "nanomaggy"}
    cat = read_catalog(p, columns=cmap)
    assert_consistent(cat, 100)
    assert len(cat) == 10_000 and (cat.flux[:, 0] <= 0).sum() == 12  # README: u ≤ 0 in 12 rows, kept
    raw = read_catalog(p, columns={**cmap, "bands": {k: {kk: vv for kk, vv in v.items() if kk != "extinction"}
                                                     for k, v in cmap["bands"].items()}})
    assert np.all(cat.flux[:, 2][raw.flux[:, 2] > 0] >= raw.flux[:, 2][raw.flux[:, 2] > 0])
    # GALEX: 0 = no match, -99 = no measurement → < 50 % measured, refused
    galex = {
        "bands": {"galex-nuv": {"flux": "NUV_FLUX_AUTO", "flux_err": "NUV_FLUXERR_AUTO"}},
        "flux_unit": "nanomaggy",
    }
    raises_one_line(
        r"gst_tests_small\.fits: band galex-nuv .* keeps only 774 of 10000 rows .*flux=-99 ×40",
        read_catalog,
        p,
        columns=galex,
    )


def test_real_kcorrect_training_and_boss():
    p = _need(SHARED_DATA / "real" / "kcorrect_sdss_training" / "sdss_training_set.test.fits")
    cmap = {"bands": {f"sdss2010-{b}": {"flux": f"MAGGIES[{i}]", "flux_ivar": f"MAGGIES_IVAR[{i}]"}
                      for i, b in enumerate("ugriz")}, "z_spec": "REDSHIFT", "flux_unit": "nanomaggy"}
    cat = read_catalog(p, columns=cmap)
    assert "ivar=0/inf ×1633" in cat.report[0] and len(cat) == 31_924
    raises_one_line(
        r"band twomass-J .* keeps only 4685 of 31924 rows",
        read_catalog,
        p,
        columns={**cmap, "bands": {"twomass-J": {"flux": "MAGGIES[5]", "flux_ivar": "MAGGIES_IVAR[5]"}}},
    )
    b = _need(SHARED_DATA / "real" / "annz_boss_dr10" / "boss_dr10_specz_union.csv")
    cat = read_catalog(
        b,
        columns={
            "bands": {
                f"sdss2010-{x}": {"mag": f"MAG_{x.upper()}", "mag_err": f"MAGERR_{x.upper()}"}
                for x in "ugriz"
            },
            "z_spec": "Z",
        },
    )
    assert_consistent(cat, 100)
    assert f"mag err>{MAX_MAG_ERR:g} ×5861" in cat.report[0]
