"""Flux columns need a unit, and their values must look like fluxes in that unit (not magnitudes,
not fluxes in another unit)."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from astropy.table import Table

from engine.catalog import read_catalog
from engine.errors import CatalogError

REPO = Path(__file__).resolve().parents[1]
REAL = REPO.parent / "shared" / "data" / "real"


def _one_line(match: str, fn, *args, **kw) -> str:
    with pytest.raises(CatalogError, match=match) as ei:
        fn(*args, **kw)
    msg = str(ei.value)
    assert "\n" not in msg and len(msg) < 600, msg
    return msg


def _table(values: np.ndarray, errors: np.ndarray, unit: str | None = None) -> Table:
    t = Table({"flux_sdss2010-r": values, "flux_err_sdss2010-r": errors})
    if unit:
        t["flux_sdss2010-r"].unit = unit
        t["flux_err_sdss2010-r"].unit = unit
    return t


def _galaxy_fluxes(n: int = 500, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Magnitudes 16–22 with background-limited errors, and the fluxes [nmgy] and flux errors."""
    rng = np.random.default_rng(seed)
    m = rng.uniform(16.0, 22.0, n)
    merr = 0.005 * 10 ** (0.4 * (m - 16.0))
    f = 10 ** (-0.4 * (m - 22.5))
    return m, f, 0.4 * np.log(10) * f * merr


def test_a_flux_column_without_unit_is_refused():
    _, f, s = _galaxy_fluxes()
    _one_line(r"^<in-memory table>: flux column flux_sdss2010-r \(band sdss2010-r\) has no unit; give it "
              r"with --flux-unit", read_catalog, _table(f, s))
    np.testing.assert_allclose(read_catalog(_table(f, s), flux_unit="nanomaggy").flux[:, 0], f)
    np.testing.assert_allclose(read_catalog(_table(f, s), columns={"flux_unit": "nmgy"}).flux[:, 0], f)
    np.testing.assert_allclose(read_catalog(_table(f, s, unit="nanomaggy")).flux[:, 0], f)


def test_magnitudes_in_a_flux_column_are_refused():
    m, _, _ = _galaxy_fluxes()
    merr = 0.005 * 10 ** (0.4 * (m - 16.0))
    msg = _one_line(r"flux column flux_sdss2010-r \(band sdss2010-r\) in nmgy looks like AB magnitudes, not "
                    r"fluxes: its 500 measured values lie in 16–22", read_catalog,
                    _table(m, merr, "nanomaggy"))
    assert msg.endswith("read it as magnitudes (mag_<band> or 'mag:' in a column map)")
    # every value in 10–30 with tiny errors (errors unrelated to the values)
    rng = np.random.default_rng(1)
    v = rng.uniform(10, 30, 300)
    _one_line(r"looks like AB magnitudes", read_catalog, _table(v, rng.uniform(0.01, 0.05, 300)),
              flux_unit="uJy")


def test_fluxes_in_another_unit_are_refused():
    _, f, s = _galaxy_fluxes()
    # maggies said to be microjansky: ~1e-8 uJy is m_AB ≈ 44
    _one_line(r"in uJy gives a median AB magnitude of 4\d\.\d, fainter than any galaxy catalog's; looks like "
              r"fluxes in maggy", read_catalog, _table(f * 1e-9, s * 1e-9, "uJy"))
    # nanomaggies said to be maggies
    _one_line(r"in maggy gives a median AB magnitude of -\d+\.\d, brighter than any galaxy catalog's; looks "
              r"like fluxes in nanomaggy", read_catalog, _table(f, s), flux_unit="maggy")


def test_real_fluxes_pass():
    _, f, s = _galaxy_fluxes(seed=3)
    for unit, scale in (("nanomaggy", 1.0), ("uJy", 3.631), ("Jy", 3.631e-6), ("maggy", 1e-9)):
        cat = read_catalog(_table(f * scale, s * scale, unit))
        np.testing.assert_allclose(cat.flux[:, 0], f, rtol=1e-9)
    # a bright, narrow and precise sample (r 16.5–17.5, S/N ≈ 100) is still fluxes
    rng = np.random.default_rng(4)
    f = 10 ** (-0.4 * (rng.uniform(16.5, 17.5, 300) - 22.5))
    assert len(read_catalog(_table(f, 0.01 * f, "nanomaggy"))) == 300


@pytest.mark.skipif(not REAL.is_dir(), reason="../shared/data/real is absent")
def test_real_maggies_column_holds_nanomaggies():
    path = REAL / "kcorrect_sdss_training" / "sdss_training_set.test.fits"
    cmap = {"bands": {f"sdss2010-{b}": {"flux": f"MAGGIES[{k}]", "flux_ivar": f"MAGGIES_IVAR[{k}]"}
                      for k, b in enumerate("ugriz")}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _one_line(r"flux column MAGGIES\[0\] \(band sdss2010-u\) in maggy gives a median AB magnitude of "
                  r"-\d\.\d, brighter than any galaxy catalog's; looks like fluxes in nanomaggy",
                  read_catalog, path, columns=cmap, flux_unit="maggy")
        cat = read_catalog(path, columns=cmap, flux_unit="nanomaggy")
    assert 17.5 < np.nanmedian(cat.magnitudes()[:, 2]) < 19.5  # median r_AB = 18.6
