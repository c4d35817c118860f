"""Bad input to the SPS gives a one-line ValueError that names the problem."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from astropy.table import Table

from engine.sps import SPSModel

from conftest import uniform_theta


def test_theta_outside_bounds_names_the_parameter(sdss_model):
    theta = uniform_theta(sdss_model, 10)
    theta[3, sdss_model.param_names.index("tau2")] = 3.5
    with pytest.raises(ValueError, match=r"parameter 'tau2' outside its range \[0, 3\]: 1 of 10 rows"):
        sdss_model.fluxes(theta)


def test_redshift_beyond_z_max(sdss_model):
    theta = uniform_theta(sdss_model, 4)
    theta[:, 0] = 0.9
    with pytest.raises(ValueError, match=r"parameter 'z' outside its range \[0, 0.65\]"):
        sdss_model.magnitudes(theta)


def test_nan_theta_names_the_parameter(sdss_model):
    theta = uniform_theta(sdss_model, 5)
    theta[1:3, sdss_model.param_names.index("log_zmet")] = float("nan")
    with pytest.raises(ValueError, match=r"NaN/inf in parameter 'log_zmet' \(2 of 5 rows\)"):
        sdss_model.derived(theta)


@pytest.mark.parametrize("shape", [(5, 10), (11,) * 0 + (3, 12), (2, 11, 1)])
def test_wrong_shape(sdss_model, shape):
    with pytest.raises(ValueError, match=r"theta must have shape \(N, 11\)"):
        sdss_model.fluxes(torch.zeros(shape))


def test_unknown_band_suggests_close_matches():
    with pytest.raises(ValueError, match=r"unknown band 'sdss2010-R'.*did you mean 'sdss2010-r'"):
        SPSModel(["sdss2010-u", "sdss2010-R"])
    with pytest.raises(ValueError, match=r"unknown band 'galex-FUV'.*'galex-fuv'"):
        SPSModel(["galex-FUV"])


def test_band_beyond_the_red_end_of_the_grid():
    with pytest.raises(ValueError, match=r"band 'wise2010-W3' extends to .* beyond the SSP grid"):
        SPSModel(["sdss2010-r", "wise2010-W3"])


def test_band_below_the_blue_end_at_z_max(tmp_path):
    w = np.linspace(150, 260, 50)
    t = Table({"wavelength": w, "response": np.exp(-((w - 205) / 25) ** 2)})
    t["wavelength"].unit = "Angstrom"
    path = tmp_path / "euv.ecsv"
    t.write(path)
    SPSModel([str(path)], z_max=0.2)  # 150/1.2 = 125 Å: inside the grid
    with pytest.raises(ValueError, match=r"band 'euv' starts at 150 Å.*z_max=1.*below the SSP grid"):
        SPSModel([str(path)], z_max=1.0)


def test_ecsv_filter_gives_the_same_fluxes_as_speclite(tmp_path, sdss_model):
    f = sdss_model.filters[2]
    t = Table({"wavelength": f.wave / 10.0, "response": f.response})
    t["wavelength"].unit = "nm"
    path = tmp_path / "my_r.ecsv"
    t.write(path)
    m = SPSModel([str(path)], device="cpu")
    assert m.bands == ("my_r",)
    theta = uniform_theta(m, 20)
    assert torch.allclose(m.fluxes(theta)[:, 0], sdss_model.fluxes(theta)[:, 2], rtol=1e-5)


def test_bad_filter_files(tmp_path):
    bad = tmp_path / "bad.ecsv"
    Table({"lam": [1.0, 2.0, 3.0], "r": [0.0, 1.0, 0.0]}).write(bad)
    with pytest.raises(ValueError, match=r"needs columns 'wavelength' and 'response'"):
        SPSModel([str(bad)])
    with pytest.raises(ValueError, match=r"does not exist"):
        SPSModel([str(tmp_path / "missing.ecsv")])


def test_duplicate_bands_and_empty_band_list():
    with pytest.raises(ValueError, match=r"band\(s\) given twice: sdss2010-r"):
        SPSModel(["sdss2010-r", "sdss2010-g", "sdss2010-r"])
    with pytest.raises(ValueError, match=r"at least one band"):
        SPSModel([])


def test_cuda_requested_without_cuda():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ValueError, match=r"device 'cuda' requested but CUDA is not available"):
        SPSModel(["sdss2010-r"], device="cuda")
