"""engine.mock: reproducible, unbiased magnitude-limited mocks, and its command line."""
from __future__ import annotations

import json

import astropy.units as u
import numpy as np
import pytest
from astropy.table import Table

from engine.cli import main
from engine.mock import MASS_MARGIN_DEX, MockSurvey, NoiseModel, parse_mag_limits, smf_baldry12


@pytest.fixture(scope="module")
def mock_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("mock")
    assert main(["mock", str(out), "--n", "400", "--seed", "7"]) == 0
    return out


def test_mock_files_and_columns(mock_dir):
    cat = Table.read(mock_dir / "catalog.ecsv")
    truth = Table.read(mock_dir / "truth.ecsv")
    settings = json.loads((mock_dir / "mock.json").read_text())
    assert len(cat) == len(truth) == 400
    for b in settings["bands"]:
        for c in ("flux_", "flux_err_", "mag_", "mag_err_"):
            assert f"{c}{b}" in cat.colnames
        ab = u.zero_point_flux(3631 * u.Jy)  # maggies are relative to the AB zero point
        assert (1.0 * cat[f"flux_{b}"].unit).to_value(u.Jy, ab) == pytest.approx(3.631e-6)
    assert np.allclose(cat["z_spec"], truth["z"], atol=1e-6)
    assert settings["mag_limits"] == {"sdss2010-r": 19.8}
    assert settings["seed"] == 7
    for name in ("log_sfr_100myr", "log_mformed", "mwage_gyr", "tau2", "kappa1"):
        assert name in truth.colnames


def test_selection_holds_and_noise_is_applied(mock_dir):
    cat = Table.read(mock_dir / "catalog.ecsv")
    truth = Table.read(mock_dir / "truth.ecsv")
    assert np.nanmax(cat["mag_sdss2010-r"]) < 19.8
    # observed = true + noise: residuals scaled by the quoted errors are ~ N(0, 1)
    for b in ("sdss2010-u", "sdss2010-r", "sdss2010-z"):
        f_true = 10 ** (-0.4 * (np.asarray(truth[f"mag_true_{b}"], float) - 22.5))
        pull = (np.asarray(cat[f"flux_{b}"], float) - f_true) / np.asarray(cat[f"flux_err_{b}"], float)
        assert abs(np.mean(pull)) < 0.25
        assert 0.8 < np.std(pull) < 1.25
    # some true magnitudes are fainter than the limit: noise scatters galaxies across it
    assert np.sum(truth["mag_true_sdss2010-r"] > 19.8) > 0


def test_same_seed_gives_identical_files(mock_dir, tmp_path):
    assert main(["mock", str(tmp_path), "--n", "400", "--seed", "7"]) == 0
    for name in ("catalog.ecsv", "truth.ecsv", "mock.json"):
        assert (tmp_path / name).read_bytes() == (mock_dir / name).read_bytes(), name


def test_different_seed_differs(mock_dir, tmp_path):
    assert main(["mock", str(tmp_path), "--n", "400", "--seed", "8"]) == 0
    assert (tmp_path / "truth.ecsv").read_bytes() != (mock_dir / "truth.ecsv").read_bytes()


def test_truncation_never_bites(mock_dir, sdss_model):
    """Every selected galaxy lies well above the mass below which nothing is drawn."""
    truth = Table.read(mock_dir / "truth.ecsv")
    survey = MockSurvey(sdss_model, {"sdss2010-r": 19.8}, NoiseModel(sdss_model.bands))
    reach = survey.log_mass_reach_at(np.asarray(truth["z"]))
    # a selected galaxy can never be lighter than the brightest template allows (minus noise)
    assert np.all(np.asarray(truth["log_mstar"]) > reach - MASS_MARGIN_DEX + 0.1)


def test_mass_function_shape():
    # Baldry et al. (2012): low-mass slope alpha2 = -1.47 -> phi ∝ M^-0.47 per dex at low mass
    m = np.array([7.0, 8.0])
    ratio = smf_baldry12(m[0]) / smf_baldry12(m[1])
    assert ratio == pytest.approx(10**0.47, rel=0.05)
    assert smf_baldry12(np.array([12.0]))[0] < 1e-3 * smf_baldry12(np.array([10.0]))[0]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--mag-limit", "sdss2010-q:19"], "magnitude limit on band 'sdss2010-q'"),
        (["--mag-limit", "19.8"], "bad magnitude limit '19.8'"),
        (["--bands", "sdss2010-r,sdss2010-R"], "unknown band 'sdss2010-R'"),
        (["--bands", "sdss2010-r,lsst2023-y"], "no noise preset for band 'lsst2023-y'"),
        (["--n", "0"], "--n must be positive"),
    ],
)
def test_bad_arguments_give_one_line_errors(tmp_path, capsys, args, message):
    out = tmp_path / "m"
    assert main(["mock", str(out), "--n", "10"] + args) == 2
    err = capsys.readouterr().err
    assert message in err
    assert err.count("\n") == 1
    assert not (out / "catalog.ecsv").exists()


def test_parse_mag_limits():
    assert parse_mag_limits("sdss2010-r:19.8,sdss2010-g:21") == {"sdss2010-r": 19.8, "sdss2010-g": 21.0}
