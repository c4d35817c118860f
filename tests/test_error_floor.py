"""The systematic error floor (``--error-floor``): parsing, per-band resolution and its effect on the fitted
noise model."""
from __future__ import annotations

import math

import numpy as np
import pytest

from engine.errors import PopsedError
from engine.population.config import FitSpec
from engine.population.error_floor import apply_error_floor, error_floors, parse_error_floor
from engine.population.noise import NoiseModel

BANDS = ["sdss2010-g", "sdss2010-r"]


def test_parse_one_floor_or_per_band():
    assert parse_error_floor(None) == 0.0 and parse_error_floor("0.02") == 0.02
    assert parse_error_floor(0.03) == 0.03
    assert parse_error_floor("sdss2010-g=0.05, sdss2010-r=0.02") == {"sdss2010-g": 0.05, "sdss2010-r": 0.02}
    assert error_floors("0.02", BANDS, BANDS) == {"sdss2010-g": 0.02, "sdss2010-r": 0.02}
    assert error_floors("sdss2010-g=0.05", BANDS, BANDS) == {"sdss2010-g": 0.05, "sdss2010-r": 0.0}
    # a band may be named as the catalog names it
    assert error_floors({"g": 0.05}, ["g", "r"], BANDS) == {"sdss2010-g": 0.05, "sdss2010-r": 0.0}
    assert error_floors(None, BANDS, BANDS) == {"sdss2010-g": 0.0, "sdss2010-r": 0.0}


@pytest.mark.parametrize("bad, msg", [("-0.01", "must be >= 0"), ("nan", "must be >= 0"),
                                      ("abc", "cannot parse"), ("sdss2010-g=x", "cannot parse"),
                                      ("=0.1", "expected BAND=MAG"), ({"sdss2010-g": -1}, "must be >= 0")])
def test_bad_floors_are_refused(bad, msg):
    with pytest.raises(PopsedError, match=msg):
        FitSpec(error_floor=bad)


def test_unknown_band_is_refused():
    with pytest.raises(PopsedError, match="names band 'sdss2010-y'"):
        error_floors("sdss2010-y=0.02", BANDS, BANDS)


def test_zero_floor_leaves_the_errors_unchanged():
    e = np.array([[0.1, 0.2]])
    assert apply_error_floor(np.array([[10.0, 20.0]]), e, [0.0, 0.0]) is e


def test_noise_model_sigma_at_bright_magnitudes_rises_to_the_floor():
    rng = np.random.default_rng(0)
    m = rng.uniform(14.0, 21.0, (20000, 2))
    flux = 10 ** (-0.4 * (m - 22.5))
    err = np.sqrt((0.001 * flux) ** 2 + 1.0)  # 0.1 % of the flux plus a sky term of 1 nanomaggy
    flux_noisy = flux + rng.normal(size=flux.shape) * err
    floors = [0.02, 0.05]

    def bright_mag_error(e):
        nm = NoiseModel.fit(flux_noisy, e, BANDS)
        out = []
        for band in BANDS:
            nb = nm.per_band[band]
            f = 10 ** (-0.4 * (nb.mag[0] - 22.5))
            out.append(10 ** nb.log10_sigma_median[0] / f / (0.4 * math.log(10)))  # sigma in mag
        return np.array(out)

    before = bright_mag_error(err)
    after = bright_mag_error(apply_error_floor(flux_noisy, err, floors))
    assert (before < 0.005).all()
    assert np.allclose(after, floors, rtol=0.1)
    # the faint end, dominated by the catalog's own errors, moves little
    nm0 = NoiseModel.fit(flux_noisy, err, BANDS)
    nm1 = NoiseModel.fit(flux_noisy, apply_error_floor(flux_noisy, err, floors), BANDS)
    assert abs(nm1.per_band["sdss2010-g"].log10_sigma_median[-1]
               - nm0.per_band["sdss2010-g"].log10_sigma_median[-1]) < 0.05
