"""Band columns under common survey names: filter letters (u/err_u, MAG_U/MAGERR_U), SDSS CAS
magnitudes (modelMag_u), sedpy filter names (sdss_r0), vector columns (MAGGIES[k]) and hints."""
from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pytest
from astropy.table import Table

from engine.catalog import read_catalog
from engine.errors import CatalogError

REPO = Path(__file__).resolve().parents[1]
REAL = REPO.parent / "shared" / "data" / "real"
SDSS = ("sdss2010-u", "sdss2010-g", "sdss2010-r", "sdss2010-i", "sdss2010-z")


def _mags(n: int = 150, nb: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    m = rng.uniform(16.0, 21.0, (n, nb))
    return m, 0.01 * 10 ** (0.3 * (m - 16.0))


def _fail_msg(fn, *args, **kw) -> str:
    with pytest.raises(CatalogError) as ei:
        fn(*args, **kw)
    msg = str(ei.value)
    assert "\n" not in msg and len(msg) < 600, msg
    return msg


@pytest.mark.parametrize("value,err", [("{L}", "err_{L}"), ("{L}", "{L}_err"), ("MAG_{U}", "MAGERR_{U}"),
                                       ("mag_{L}", "mag_err_{L}")])
def test_letter_named_columns_with_bands_asked_for(value, err):
    m, e = _mags()
    t = Table()
    for j, b in enumerate(SDSS):
        L = b[-1]
        t[value.format(L=L, U=L.upper())] = m[:, j]
        t[err.format(L=L, U=L.upper())] = e[:, j]
    t["zspec"] = np.full(len(t), 0.1)
    cat = read_catalog(t, bands=",".join(SDSS))
    assert cat.bands == SDSS
    np.testing.assert_allclose(cat.magnitudes(), m, rtol=1e-12)
    assert any("matched by the filter letter 'u'" in r for r in cat.report)
    assert not any(r.startswith("ignored columns") for r in cat.report)
    # without --bands the letters are not guessed; the message names the bands to pass
    msg = _fail_msg(read_catalog, t)
    assert msg.startswith("no band columns in <in-memory table>")
    assert msg.endswith("--bands sdss2010-u,sdss2010-g,sdss2010-r,sdss2010-i,sdss2010-z")


def test_letter_needs_an_error_column_and_a_unique_letter():
    m, e = _mags(nb=2)
    # a lone 'z' (a redshift) next to mag_z/magerr_z is not read as the z band
    t = Table({"mag_r": m[:, 0], "magerr_r": e[:, 0], "mag_z": m[:, 1], "magerr_z": e[:, 1],
               "z": np.full(150, 0.1)})
    cat = read_catalog(t, bands="sdss2010-r,sdss2010-z")
    assert "from mag_z ± magerr_z" in cat.report[1]
    # two bands with the same letter: letters are ambiguous and not used
    msg = _fail_msg(read_catalog, t, bands="sdss2010-r,decam2014-r")
    assert "no band columns in <in-memory table> for band(s) sdss2010-r, decam2014-r" in msg


def test_sdss_cas_magnitudes_found_without_bands():
    m, e = _mags()
    t = Table()
    for j, b in enumerate(SDSS):
        t[f"modelMag_{b[-1]}"] = m[:, j]
        t[f"modelMagErr_{b[-1]}"] = e[:, j]
        t[f"petroMag_{b[-1]}"] = m[:, j] + 0.1
        t[f"petroMagErr_{b[-1]}"] = e[:, j]
    cat = read_catalog(t)
    assert cat.bands == SDSS
    np.testing.assert_allclose(cat.magnitudes(), m, rtol=1e-12)
    assert any(r.startswith("SDSS magnitudes: using modelMag_*, ignoring petroMag") for r in cat.report)


def test_sedpy_filter_names():
    m, e = _mags(nb=2)
    t = Table({"sdss_r0": m[:, 0], "sdss_r0_err": e[:, 0], "mag_galex_NUV": m[:, 1],
               "mag_err_galex_NUV": e[:, 1]})
    cat = read_catalog(t)
    assert cat.bands == ("sdss2010-r", "galex-nuv")
    np.testing.assert_allclose(cat.magnitudes(), m, rtol=1e-12)
    assert read_catalog(t, bands="sdss_r0").bands == ("sdss2010-r",)


def test_unknown_letter_band_suggests_speclite_names():
    m, e = _mags(nb=1)
    t = Table({"u": m[:, 0], "err_u": e[:, 0]})
    msg = _fail_msg(read_catalog, t, bands="u")
    assert re.search(r"unknown band 'u' .*; did you mean 'sdss2010-u'", msg), msg


def test_vector_columns_one_element_per_band_asked_for():
    m, e = _mags(nb=3)
    f = 10 ** (-0.4 * (m - 22.5))
    ivar = 1 / (0.4 * np.log(10) * f * e) ** 2
    t = Table({"MODELFLUX": f, "MODELFLUX_IVAR": ivar, "PETROFLUX": 2 * f, "PETROFLUX_IVAR": ivar,
               "EXTINCTION": np.zeros((150, 3))})
    bands = "sdss2010-g,sdss2010-r,sdss2010-i"
    cat = read_catalog(t, bands=bands, flux_unit="nanomaggy")
    np.testing.assert_allclose(cat.flux, f, rtol=1e-12)
    np.testing.assert_allclose(cat.magnitude_errors(), e, rtol=1e-9)
    assert any("from vector columns MODELFLUX ± MODELFLUX_IVAR" in r and "not used: PETROFLUX" in r
               for r in cat.report)
    msg = _fail_msg(read_catalog, t, bands="sdss2010-g,sdss2010-r", flux_unit="nanomaggy")
    assert "vector column(s) MODELFLUX[3], PETROFLUX[3] do not have one element per band asked for (2)" in msg
    t2 = Table({"A": f, "A_IVAR": ivar, "B": f, "B_IVAR": ivar})
    msg = _fail_msg(read_catalog, t2, bands=bands, flux_unit="nanomaggy")
    assert "several vector columns fit the 3 bands asked for (A, B)" in msg


@pytest.mark.skipif(not REAL.is_dir(), reason="../shared/data/real is absent")
def test_real_sdss_tables_by_their_own_names():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mgs = read_catalog(REAL / "mlz_sdss_mgs" / "sdss_mgs_10k.csv", bands=",".join(SDSS))
        boss = read_catalog(REAL / "annz_boss_dr10" / "boss_dr10_specz_union.csv", bands=",".join(SDSS))
        gst = read_catalog(REAL / "kcorrect_gst" / "gst_tests_small.fits", bands=",".join(SDSS),
                           flux_unit="nanomaggy")
    assert len(mgs) == 10000 and mgs.z_spec is not None and "from u ± u_err" in mgs.report[0]
    assert len(boss) == 35762 and "from MAG_R ± MAGERR_R" in boss.report[2]
    assert len(gst) == 10000 and "from MODELFLUX[2] ± MODELFLUX_IVAR[2]" in gst.report[2]
    assert 14 < np.nanmedian(gst.magnitudes()[:, 2]) < 18  # SDSS main sample: r ≲ 17.8


def test_zero_point_key_counts_per_second_to_ab():
    rng = np.random.default_rng(5)
    m = rng.uniform(18.0, 22.0, 150)
    cps = 10 ** (-0.4 * (m - 20.08))
    t = Table({"NUV_FLUX_AUTO": cps, "NUV_FLUXERR_AUTO": 0.05 * cps})
    t["NUV_FLUX_AUTO"].unit = "ct / s"
    cmap = {"bands": {"galex-nuv": {"flux": "NUV_FLUX_AUTO", "flux_err": "NUV_FLUXERR_AUTO",
                                    "zero_point": 20.08}}}
    cat = read_catalog(t, columns=cmap, flux_unit="uJy")  # the band's zero point wins over the global unit
    np.testing.assert_allclose(cat.magnitudes()[:, 0], m, rtol=1e-12)
    assert "[AB zero point 20.08]" in cat.report[0]
    both = {"bands": {"galex-nuv": {**cmap["bands"]["galex-nuv"], "flux_unit": "uJy"}}}
    assert "has both flux_unit and zero_point" in _fail_msg(read_catalog, t, columns=both)
    t["NUV_FLUX_AUTO"].unit = "uJy"
    assert "has unit 'uJy' but band galex-nuv has a zero_point" in _fail_msg(read_catalog, t, columns=cmap)
    nomag = {"bands": {"galex-nuv": {"mag": "NUV_FLUX_AUTO", "mag_err": "NUV_FLUXERR_AUTO",
                                     "zero_point": 20.0}}}
    assert "zero_point applies to a 'flux' column" in _fail_msg(read_catalog, t, columns=nomag)


@pytest.mark.skipif(not REAL.is_dir(), reason="../shared/data/real is absent")
def test_docs_column_maps_for_sdss_galex_2mass(tmp_path):
    text = (REPO / "docs" / "catalogs.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", text, re.DOTALL)
    sdss = next(b for b in blocks if "MODELFLUX[0]" in b)
    galex = next(b for b in blocks if "zero_point: 20.08" in b)
    tmass = next(b for b in blocks if "K_M_EXT" in b)
    merged = sdss.replace("bands:\n", "bands:\n" + galex.split("bands:\n")[1] + tmass.split("bands:\n")[1])
    p = tmp_path / "gst.yml"
    p.write_text(merged)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cat = read_catalog(REAL / "kcorrect_gst" / "gst_tests_small.fits", columns=p, min_fraction=0.05)
    assert (cat.bands[:5] == ("galex-fuv", "galex-nuv", "twomass-J", "twomass-H", "twomass-Ks")
            and len(cat.bands) == 10)
    med = dict(zip(cat.bands, np.nanmedian(cat.magnitudes(), axis=0), strict=True))
    assert 16 < med["sdss2010-r"] < 17.8 and 0.8 < med["sdss2010-r"] - med["twomass-Ks"] < 2.0  # r − Ks (AB)
